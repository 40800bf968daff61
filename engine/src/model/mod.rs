//! Model architectures. Each file reads like its paper; hyperparameters come only from metadata.
