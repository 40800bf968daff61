//! Generation loop: prefill, decode, streaming, stop conditions, cancellation.
