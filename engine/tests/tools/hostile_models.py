#!/usr/bin/env python3
"""Crafted model files for `engine/tests/hostile.rs`: each is the SmolLM2 test model (read with
the `gguf` package's GGUFReader) with one thing changed the way an attacker would change it.
Nothing here is committed as a binary; the files are written to OUT_DIR with a `cases.json`
that says how to run `slm` on each and what it must answer.

    hostile_models.py MODEL OUT_DIR [--only NAME,NAME]

Tensor data is copied only where a case runs the model to the end; elsewhere the data section
is a sparse hole of the same size (zeros, no disk space), since the file is refused first.
"""
import json
import os
import shutil
import struct
import sys

from gguf import GGUFReader

# GGUF value type ids (`enum gguf_type`).
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
ALIGN = 32


def enc_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack('<Q', len(b)) + b


def enc_value(ty, v):
    if ty == STRING:
        return enc_str(v)
    if ty == ARRAY:
        elem, items = v
        if isinstance(items, Repeat):
            return struct.pack('<IQ', elem, items.n) + enc_value(elem, items.item) * items.n
        if isinstance(items, (bytes, bytearray)):
            # Raw little-endian elements of a fixed-width type.
            size = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, U64: 8, I64: 8,
                    F64: 8}[elem]
            return struct.pack('<IQ', elem, len(items) // size) + bytes(items)
        out = struct.pack('<IQ', elem, len(items))
        return out + b''.join(enc_value(elem, x) for x in items)
    fmt = {U8: '<B', I8: '<b', U16: '<H', I16: '<h', U32: '<I', I32: '<i', F32: '<f',
           BOOL: '<?', U64: '<Q', I64: '<q', F64: '<d'}[ty]
    return struct.pack(fmt, v)


class Repeat:
    """`n` copies of one array element, encoded once."""

    def __init__(self, item, n):
        self.item, self.n = item, n


def enc_kv(key, ty, v):
    return enc_str(key) + struct.pack('<I', ty) + enc_value(ty, v)


class Model:
    """The source model's metadata (raw bytes per key, in order) and tensor infos."""

    def __init__(self, path):
        self.path = path
        r = GGUFReader(path)
        self.reader = r
        self.kv = [(k, b''.join(p.tobytes() for p in f.parts))
                   for k, f in r.fields.items() if not k.startswith('GGUF.')]
        self.tensors = [dict(name=t.name, dims=[int(d) for d in t.shape], type=int(t.tensor_type),
                             offset=int(t.data_offset - r.data_offset), size=int(t.n_bytes))
                        for t in r.tensors]
        self.data_offset = r.data_offset
        self.data_len = os.path.getsize(path) - r.data_offset

    def field(self, key):
        f = self.reader.fields[key]
        return [f.parts[i] for i in f.data]

    def strings(self, key):
        return [bytes(p) for p in self.field(key)]

    def values(self, key):
        return [p[0].item() for p in self.field(key)]


def write(path, kv, tensors, data=None, data_len=0, version=3, n_tensors=None, n_kv=None,
          truncate=None):
    """kv: raw entries (bytes); tensors: dicts; data: a source file to copy the data section
    from, else a sparse hole of `data_len` bytes."""
    head = b'GGUF' + struct.pack('<IQQ', version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kv) if n_kv is None else n_kv)
    body = b''.join(kv)
    infos = b''.join(enc_str(t['name']) + struct.pack('<I', len(t['dims']))
                     + b''.join(struct.pack('<Q', d) for d in t['dims'])
                     + struct.pack('<IQ', t['type'], t['offset']) for t in tensors)
    out = head + body + infos
    out += b'\0' * (-len(out) % ALIGN)
    with open(path, 'wb') as f:
        f.write(out)
        if data is not None:
            with open(data[0], 'rb') as src:
                src.seek(data[1])
                shutil.copyfileobj(src, f, 1 << 22)
        else:
            f.truncate(len(out) + data_len)
        if truncate is not None:
            f.truncate(truncate)


def replace(kv, key, ty, value):
    """The entries with `key` replaced (or appended)."""
    new = enc_kv(key, ty, value)
    out, done = [], False
    for k, raw in kv:
        if k == key:
            out.append((k, new))
            done = True
        else:
            out.append((k, raw))
    if not done:
        out.append((key, new))
    return out


def drop(kv, key):
    return [(k, raw) for k, raw in kv if k != key]


HOSTILE_TEMPLATES = {
    'template_nested_loops': (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        'fuel limit'),
    'template_string_doubling': (
        "{% set ns = namespace(s='0123456789') %}{% for i in range(30) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        'string size limit'),
    'template_tojson_indent': ("{{ messages|tojson(indent=100000000000) }}", 'width limit'),
    'template_tojson_indent_2_63': ("{{ messages|tojson(indent=2**63) }}", 'width limit'),
    'template_indent': ("{{ messages[0]['content']|indent(100000000000) }}", 'width limit'),
    'template_repeat': ("{{ messages[0]['content'] * 100000000000 }}", 'string size limit'),
    'template_recursion': ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", 'recursion limit'),
    'template_raise': ("{{ raise_exception('no chat here') }}", 'no chat here'),
}


def cases(m, out):
    """(name, writer or None, slm args with {f} for the file, expected exit code, needle,
    max peak RSS in MB)."""
    kv = m.kv
    data_len = m.data_len
    sparse = dict(data_len=data_len)
    real = dict(data=(m.path, m.data_offset))
    gen = ['generate', '--model', '{f}', '--prompt', 'Hi', '--max-tokens', '2']
    chat = ['generate', '--model', '{f}', '--messages', '[{"role":"user","content":"Hi"}]',
            '--max-tokens', '2']
    tokens = m.strings('tokenizer.ggml.tokens')
    n_vocab = len(tokens)
    c = []

    def add(name, writer, args=gen, code=2, needle='', rss=300):
        c.append((name, writer, args, code, needle, rss))

    # --- Earlier cases: the header itself -------------------------------------------------
    add('bad_magic', lambda p: (write(p, [r for _, r in kv], m.tensors, **sparse),
                                patch(p, 0, b'GGML')), needle='magic')
    add('bad_version', lambda p: write(p, [r for _, r in kv], m.tensors, version=9, **sparse),
        needle='version 9')
    add('absurd_tensor_count', lambda p: write(p, [r for _, r in kv], m.tensors,
                                               n_tensors=(1 << 64) // 3, **sparse),
        needle='tensor count')
    add('absurd_string_length', lambda p: (write(p, [r for _, r in kv], m.tensors, **sparse),
                                           patch(p, 24, struct.pack('<Q', 1 << 50))),
        needle='exceeds the limit')
    add('truncated_data', lambda p: write(p, [r for _, r in kv], m.tensors, **sparse,
                                          truncate=m.data_offset + 1000), needle='truncated')
    add('truncated_metadata', lambda p: write(p, [r for _, r in kv], m.tensors, **sparse,
                                              truncate=5000), needle='truncated')
    add('unsupported_architecture',
        lambda p: write(p, [r for _, r in replace(kv, 'general.architecture', STRING, 'mamba')],
                        m.tensors, **sparse), needle='unsupported model architecture `mamba`')
    t = [dict(x) for x in m.tensors]
    t[0]['type'] = 16
    add('unsupported_tensor_type', lambda p: write(p, [r for _, r in kv], t, **sparse),
        needle='unsupported type iq2_xxs')

    # --- Chat templates -------------------------------------------------------------------
    for name, (src, needle) in HOSTILE_TEMPLATES.items():
        add(name, lambda p, src=src: write(
            p, [r for _, r in replace(kv, 'tokenizer.chat_template', STRING, src)], m.tensors,
            **sparse), args=chat, needle=needle)
    # Only the metadata (no tensors): the template fails before anything else is read (the
    # browser test imports this one, small enough to be refused in well under 10 s).
    add('template_header_only', lambda p: write(
        p, [r for _, r in replace(kv, 'tokenizer.chat_template', STRING,
                                  HOSTILE_TEMPLATES['template_nested_loops'][0])], []),
        args=chat, needle='fuel limit')
    # The explicit fallback: the hostile file still chats, with a note on stderr.
    add('template_fallback', lambda p: write(
        p, [r for _, r in replace(kv, 'tokenizer.chat_template', STRING,
                                  HOSTILE_TEMPLATES['template_nested_loops'][0])],
        m.tensors, **real), args=chat + ['--template-fallback'], code=0,
        needle='built-in chat format')

    # --- Metadata arrays: memory proportional to what is used -----------------------------
    bomb = [(f'bomb.u8.{i}', enc_kv(f'bomb.u8.{i}', ARRAY, (U8, bytes(16 << 20))))
            for i in range(4)]
    add('array_bomb_u8_64mib',
        lambda p: write(p, [r for _, r in bomb + replace(kv, 'general.architecture', STRING,
                                                         'bomb')], [], **sparse),
        needle='unsupported model architecture', rss=100)
    add('array_bomb_tokens',
        lambda p: write(p, [r for _, r in replace(kv, 'tokenizer.ggml.tokens', ARRAY,
                                                  (STRING, Repeat(b'x', 7 << 20)))], m.tensors,
                        **sparse), needle='over the limit', rss=100)
    add('array_bomb_scores',
        lambda p: write(p, [r for _, r in replace(kv, 'tokenizer.ggml.scores', ARRAY,
                                                  (U32, bytes(64 << 20)))], m.tensors,
                        **sparse), needle='tokenizer.ggml.scores', rss=100)
    nested = enc_kv('bomb.nested', ARRAY, (ARRAY, Repeat((U8, bytes(1 << 20)), 64)))
    add('array_bomb_nested',
        lambda p: write(p, [nested] + [r for _, r in replace(kv, 'general.architecture', STRING,
                                                             'bomb')], [], **sparse),
        needle='unsupported model architecture', rss=100)

    # --- Sizes from the command line and the metadata -------------------------------------
    add('max_tokens_overflow', lambda p: write(p, [r for _, r in kv], m.tensors, **sparse),
        args=['generate', '--model', '{f}', '--prompt', 'Hi', '--max-tokens',
              '18446744073709551615'], needle='context holds')
    add('bench_prompt_tokens_overflow',
        lambda p: write(p, [r for _, r in kv], m.tensors, **sparse),
        args=['bench', '--model', '{f}', '--prompt-tokens', '18446744073709551615'],
        needle='--prompt-tokens')
    add('huge_context_from_metadata',
        lambda p: write(p, [r for _, r in replace(kv, 'llama.context_length', U32, 1 << 24)],
                        m.tensors, **sparse),
        args=gen + ['--ctx', str(1 << 24)], needle='may be used')

    # --- Consistency of the file ----------------------------------------------------------
    add('block_count_29_of_30',
        lambda p: write(p, [r for _, r in replace(kv, 'llama.block_count', U32, 29)], m.tensors,
                        **sparse), needle='block_count')
    t2 = [dict(x) for x in m.tensors]
    t2[1]['offset'] = t2[0]['offset']
    add('tensors_share_bytes', lambda p: write(p, [r for _, r in kv], t2, **sparse),
        needle='overlaps')
    small = replace(kv, 'tokenizer.ggml.tokens', ARRAY, (STRING, tokens[:1000]))
    small = replace(small, 'tokenizer.ggml.scores', ARRAY,
                    (F32, m.values('tokenizer.ggml.scores')[:1000])) \
        if 'tokenizer.ggml.scores' in m.reader.fields else small
    small = replace(small, 'tokenizer.ggml.token_type', ARRAY,
                    (I32, m.values('tokenizer.ggml.token_type')[:1000]))
    add('vocab_1000_of_49152', lambda p: write(p, [r for _, r in small], m.tensors, **sparse),
        needle='tokenizer.ggml.tokens')
    eps = 'llama.attention.layer_norm_rms_epsilon'
    add('rms_eps_nan', lambda p: write(p, [r for _, r in replace(kv, eps, F32, float('nan'))],
                                       m.tensors, **sparse), needle=eps)
    add('rms_eps_negative', lambda p: write(p, [r for _, r in replace(kv, eps, F32, -1e-5)],
                                            m.tensors, **sparse), needle=eps)
    base = 'llama.rope.freq_base'
    add('rope_base_zero', lambda p: write(p, [r for _, r in replace(kv, base, F32, 0.0)],
                                          m.tensors, **sparse), needle=base)
    add('rope_base_nan', lambda p: write(p, [r for _, r in replace(kv, base, F32, float('nan'))],
                                         m.tensors, **sparse), needle=base)
    add('alignment_is_a_string',
        lambda p: write(p, [r for _, r in replace(kv, 'general.alignment', STRING, '32')],
                        m.tensors, **sparse), needle='`general.alignment`: is a string')
    add('token_type_is_strings',
        lambda p: write(p, [r for _, r in replace(kv, 'tokenizer.ggml.token_type', ARRAY,
                                                  (STRING, Repeat(b'1', n_vocab)))], m.tensors,
                        **sparse), needle='tokenizer.ggml.token_type')
    # A special-token id outside the vocabulary is dropped with a warning (as llama.cpp does);
    # the model still runs.
    add('bos_id_outside_vocab', lambda p: write(
        p, [r for _, r in replace(kv, 'tokenizer.ggml.bos_token_id', U32, 99_999_999)],
        m.tensors, **real), args=gen + ['--verbose'], code=0, needle='not a token id')

    # --- Command-line hygiene -------------------------------------------------------------
    add('empty_stop_string', None, args=gen + ['--stop', ''], needle='--stop')
    add('threads_100000', None, args=gen + ['--threads', '100000', '--verbose'], code=0,
        needle='capped at')
    add('temperature_1e-39', None, args=gen + ['--temperature', '1e-39'], code=0, needle='')
    add('error_after_load_one_line', None,
        args=['logits', '--model', '{f}', '--tokens', '99999999'], needle='outside the vocabulary')
    return c


def patch(path, at, b):
    with open(path, 'r+b') as f:
        f.seek(at)
        f.write(b)


def main():
    model, out = sys.argv[1], sys.argv[2]
    only = None
    if len(sys.argv) > 4 and sys.argv[3] == '--only':
        only = set(sys.argv[4].split(','))
    os.makedirs(out, exist_ok=True)
    m = Model(model)
    manifest = []
    for name, writer, args, code, needle, rss in cases(m, out):
        if only and name not in only:
            continue
        if writer is None:
            f = model
        else:
            f = os.path.join(out, name + '.gguf')
            writer(f)
        manifest.append(dict(name=name, file=f, args=[a.replace('{f}', f) for a in args],
                             code=code, needle=needle, max_rss_mb=rss))
    with open(os.path.join(out, 'cases.json'), 'w') as fh:
        json.dump(manifest, fh, indent=1)
    print(f'{len(manifest)} cases in {out}')


if __name__ == '__main__':
    main()
