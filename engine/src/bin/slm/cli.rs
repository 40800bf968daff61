//! The native implementation of the `slm` subcommands. Every argument and every model file is
//! untrusted input: a failure is one line on stderr and exit code 2 (the backend line and
//! notes appear only with `--verbose`; with `--json` the backend is in the summary object).

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;

use engine::backend::{self, BackendChoice, LoadedModel};
use engine::chat_template::{ChatMessage, ChatTemplate, TemplateLimits};
use engine::generate::{Clock, GenerateParams, Session, StdClock};
use engine::gguf::{FileSource, GgufFile};
use engine::model::{ForwardPass, Logits};
use engine::sampler::SamplerParams;
use engine::tokenizer::Tokenizer;

/// Context length used when `--ctx` is not given (capped by the model's trained context).
const DEFAULT_CTX: usize = 4096;

/// A command-line failure: printed as one line, exit code 2.
struct CliError(String);

impl From<engine::Error> for CliError {
    fn from(e: engine::Error) -> Self {
        CliError(e.to_string())
    }
}

type CliResult<T> = Result<T, CliError>;

fn fail<T>(msg: impl Into<String>) -> CliResult<T> {
    Err(CliError(msg.into()))
}

/// `--key value` options and `--flag`s after the subcommand.
struct Args {
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
}

/// Options that take no value.
const FLAGS: &[&str] = &["add-bos", "special", "json", "verbose", "template-fallback"];

impl Args {
    fn parse(raw: &[String]) -> CliResult<Self> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut flags = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return fail(format!("unexpected argument `{a}`"));
            };
            if FLAGS.contains(&name) {
                flags.push(name.to_string());
            } else {
                let Some(v) = it.next() else {
                    return fail(format!("option --{name} needs a value"));
                };
                values.entry(name.to_string()).or_default().push(v.clone());
            }
        }
        Ok(Self { values, flags })
    }
    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
    fn required(&self, name: &str) -> CliResult<&str> {
        self.get(name)
            .ok_or_else(|| CliError(format!("missing --{name}")))
    }
    fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> CliResult<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| CliError(format!("invalid value `{v}` for --{name}"))),
        }
    }
    fn check_known(&self, known: &[&str]) -> CliResult<()> {
        for k in self.values.keys().chain(self.flags.iter()) {
            if !known.contains(&k.as_str()) {
                return fail(format!("unknown option --{k}"));
            }
        }
        Ok(())
    }
}

/// An opened model file: its header and byte source.
struct ModelFile {
    src: FileSource,
    gguf: GgufFile,
}

fn open_model(args: &Args) -> CliResult<ModelFile> {
    let path = args.required("model")?;
    let src =
        FileSource::open(path).map_err(|e| CliError(format!("cannot open model `{path}`: {e}")))?;
    let gguf = GgufFile::parse(&src).map_err(|e| CliError(format!("`{path}`: {e}")))?;
    Ok(ModelFile { src, gguf })
}

/// A note for the user on stderr (only with `--verbose`, so that a failing run still prints
/// exactly one line).
fn note(args: &Args, msg: &str) {
    if args.flag("verbose") {
        eprintln!("slm: note: {msg}");
    }
}

/// `--threads`: 0 means every core; more than the machine has is capped (with a note).
fn threads(args: &Args) -> CliResult<usize> {
    let want = args.parse_or("threads", 1usize)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if want > cores {
        note(
            args,
            &format!("--threads {want} capped at {cores}, the available parallelism"),
        );
        return Ok(cores);
    }
    Ok(want)
}

/// The loaded model and the sentence saying which backend was taken and why.
fn load_model(args: &Args, f: &ModelFile) -> CliResult<(LoadedModel, String)> {
    let choice: BackendChoice = args.get("backend").unwrap_or("cpu").parse()?;
    let threads = threads(args)?;
    let n_ctx = args.parse_or("ctx", DEFAULT_CTX)?;
    let (model, why) = backend::load(&f.gguf, &f.src, choice, n_ctx, threads)?;
    if args.flag("verbose") {
        eprintln!("backend: {} ({why})", model.name());
    }
    Ok((model, why))
}

fn cmd_tokenize(args: &Args) -> CliResult<()> {
    args.check_known(&["model", "text", "add-bos", "special", "verbose"])?;
    let f = open_model(args)?;
    let tok = Tokenizer::from_gguf(&f.gguf)?;
    let ids = tok.encode(
        args.required("text")?,
        args.flag("add-bos"),
        args.flag("special"),
    )?;
    println!(
        "{}",
        serde_json::to_string(&ids).map_err(|e| CliError(e.to_string()))?
    );
    Ok(())
}

fn parse_tokens(s: &str) -> CliResult<Vec<u32>> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.trim()
                .parse()
                .map_err(|_| CliError(format!("invalid token id `{t}` in --tokens")))
        })
        .collect()
}

/// Top `k` (id, logit) pairs, best first.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let k = k.min(v.len());
    if k == 0 {
        return vec![];
    }
    v.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn cmd_logits(args: &Args) -> CliResult<()> {
    args.check_known(&[
        "model", "tokens", "top", "backend", "threads", "ctx", "verbose",
    ])?;
    let f = open_model(args)?;
    let tokens = parse_tokens(args.required("tokens")?)?;
    if tokens.is_empty() {
        return fail("--tokens is empty");
    }
    let k = args.parse_or("top", 5usize)?;
    let (mut model, _) = load_model(args, &f)?;
    let n_vocab = model.config().n_vocab;
    let logits = model.forward(&tokens, 0, Logits::All)?;
    let mut out = std::io::stdout().lock();
    for (pos, row) in logits.chunks_exact(n_vocab).enumerate() {
        let top: Vec<serde_json::Value> = top_k(row, k)
            .into_iter()
            .map(|(id, l)| serde_json::json!([id, l]))
            .collect();
        let _ = writeln!(out, "{}", serde_json::json!({ "pos": pos, "top": top }));
    }
    Ok(())
}

fn sampler_params(args: &Args) -> CliResult<SamplerParams> {
    let d = SamplerParams::default();
    Ok(SamplerParams {
        temperature: args.parse_or("temperature", d.temperature)?,
        top_k: args.parse_or("top-k", d.top_k)?,
        top_p: args.parse_or("top-p", d.top_p)?,
        min_p: args.parse_or("min-p", d.min_p)?,
        repeat_penalty: args.parse_or("repeat-penalty", d.repeat_penalty)?,
        repeat_last_n: d.repeat_last_n,
        seed: args.parse_or("seed", d.seed)?,
    })
}

/// Prompt token ids from `--prompt` (raw text) or `--messages` (chat template applied).
fn prompt_ids(args: &Args, f: &ModelFile, tok: &Tokenizer) -> CliResult<Vec<u32>> {
    match (args.get("prompt"), args.get("messages")) {
        (Some(p), None) => Ok(tok.encode(p, true, true)?),
        (None, Some(m)) => {
            let messages: Vec<ChatMessage> = serde_json::from_str(m).map_err(|e| {
                CliError(format!(
                    "--messages is not a JSON list of {{role, content}}: {e}"
                ))
            })?;
            let n_ctx = args.parse_or("ctx", DEFAULT_CTX)?;
            let limits = TemplateLimits::for_context(n_ctx);
            let fallback = args.flag("template-fallback");
            let (template, failed) = ChatTemplate::load(&f.gguf, tok, limits, fallback)?;
            let text = match template.render(&messages, true) {
                Ok(t) => t,
                Err(e @ engine::Error::ChatTemplate { .. }) if fallback && failed.is_none() => {
                    let mut builtin = ChatTemplate::builtin(&f.gguf, tok)?;
                    builtin.set_limits(limits);
                    fallback_note(&e);
                    builtin.render(&messages, true)?
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(e) = failed {
                fallback_note(&e);
            }
            // Templates that write the BOS text themselves must not get a second one.
            let has_bos = tok
                .bos_id()
                .and_then(|b| tok.token_text(b))
                .is_some_and(|b| text.starts_with(b));
            Ok(tok.encode(&text, !has_bos, true)?)
        }
        _ => fail("give exactly one of --prompt or --messages"),
    }
}

/// The fallback to the built-in template is never silent: it is said on stderr.
fn fallback_note(e: &engine::Error) {
    eprintln!("slm: note: {e}; using the built-in chat format instead (--template-fallback)");
}

fn cmd_generate(args: &Args) -> CliResult<()> {
    args.check_known(&[
        "model",
        "prompt",
        "messages",
        "max-tokens",
        "temperature",
        "top-k",
        "top-p",
        "min-p",
        "repeat-penalty",
        "seed",
        "stop",
        "backend",
        "threads",
        "ctx",
        "json",
        "verbose",
        "template-fallback",
    ])?;
    let stop_strings = args.all("stop");
    if stop_strings.iter().any(String::is_empty) {
        return fail("invalid value `` for --stop: an empty stop string would stop at once");
    }
    let sampler = sampler_params(args)?;
    sampler.validate()?;
    let f = open_model(args)?;
    // The hyperparameters and their consistency with the tensors and vocabulary first: a file
    // that contradicts itself is named for that, not for a symptom further on.
    engine::arch::config(&f.gguf)?;
    let tok = Tokenizer::from_gguf(&f.gguf)?;
    for w in tok.warnings() {
        note(args, w);
    }
    let ids = prompt_ids(args, &f, &tok)?;
    let params = GenerateParams {
        max_tokens: args.parse_or("max-tokens", 128usize)?,
        sampler,
        stop_strings,
        stop_on_eog: true,
    };
    let json = args.flag("json");
    let (model, why) = load_model(args, &f)?;
    let backend_name = model.name();
    let mut session = Session::new(model);
    let clock = StdClock::default();
    let mut out = std::io::stdout().lock();
    let stats = session.generate(&tok, &ids, &params, &clock, &mut |ev| {
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({ "id": ev.id, "text": ev.text })
            );
        } else {
            let _ = write!(out, "{}", ev.text);
        }
        let _ = out.flush();
        ControlFlow::Continue(())
    })?;
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({
                "n_prompt": stats.n_prompt,
                "n_generated": stats.n_generated,
                "stop_reason": stats.stop_reason.as_str(),
                "ttft_ms": stats.ttft_ms,
                "prefill_tok_s": stats.prefill_tok_s(),
                "decode_tok_s": stats.decode_tok_s(),
                "backend": backend_name,
                "backend_reason": why,
            })
        );
    } else {
        let _ = writeln!(out);
    }
    Ok(())
}

/// Peak resident memory in MiB (Linux `VmHWM`), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cmd_bench(args: &Args) -> CliResult<()> {
    args.check_known(&[
        "model",
        "backend",
        "threads",
        "prompt-tokens",
        "gen-tokens",
        "ctx",
        "reps",
        "verbose",
        "bandwidth-gbs",
    ])?;
    let clock = StdClock::default();
    let t0 = clock.now_ms();
    let f = open_model(args)?;
    let n_prompt = args.parse_or("prompt-tokens", 128usize)?;
    let n_gen = args.parse_or("gen-tokens", 128usize)?;
    let reps = args.parse_or("reps", 3usize)?.max(1);
    // Checked before loading: the prompt is allocated from these numbers.
    let n_ctx_arg = args.parse_or("ctx", DEFAULT_CTX)?;
    let in_ctx = |n_ctx: usize| engine::bench::fits(n_prompt, n_gen, n_ctx);
    if !in_ctx(n_ctx_arg) {
        return fail(format!(
            "--prompt-tokens + --gen-tokens must be in 1..={n_ctx_arg} (--ctx)"
        ));
    }
    let (mut model, _) = load_model(args, &f)?;
    let load_s = (clock.now_ms() - t0) / 1e3;
    let n_vocab = model.config().n_vocab;
    if !in_ctx(model.n_ctx()) {
        return fail(format!(
            "--prompt-tokens + --gen-tokens must be in 1..={} (the model's context)",
            model.n_ctx()
        ));
    }
    // A fixed pseudo-random prompt (the speed does not depend on the ids).
    let prompt = engine::bench::prompt_ids(n_prompt, n_vocab);
    let (mut prefill, mut decode) = (vec![], vec![]);
    for _ in 0..reps {
        let t = clock.now_ms();
        let logits = model.forward(&prompt, 0, Logits::Last)?;
        let mut next = engine::backend::cpu::ops::argmax(logits);
        prefill.push(n_prompt as f64 * 1e3 / (clock.now_ms() - t));
        let t = clock.now_ms();
        let greedy = SamplerParams::greedy();
        for i in 0..n_gen {
            // GPU: sampled on the device, only the id is read back; CPU: argmax of the logits.
            next = match model.decode_sample(next, n_prompt + i, &greedy, 0.0) {
                Some(r) => r?,
                None => engine::backend::cpu::ops::argmax(model.forward(
                    &[next],
                    n_prompt + i,
                    Logits::Last,
                )?),
            };
        }
        decode.push(n_gen as f64 * 1e3 / (clock.now_ms() - t));
    }
    let median = engine::bench::median;
    let decode_tok_s = median(&mut decode);
    // The bandwidth floor: a decode step cannot take less than its weight bytes over the
    // memory bandwidth (`--bandwidth-gbs`, the device's figure in GB/s).
    let bytes = model.weight_bytes_per_token();
    let bw: Option<f64> = match args.get("bandwidth-gbs") {
        Some(_) => Some(args.parse_or("bandwidth-gbs", 0.0f64)?),
        None => None,
    };
    if bw.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
        return fail("--bandwidth-gbs must be a positive number (GB/s)");
    }
    let floor_ms = bw.map(|b| bytes as f64 / (b * 1e9) * 1e3);
    println!(
        "{}",
        serde_json::json!({
            "model": args.required("model")?,
            "backend": model.name(),
            "threads": threads(args)?,
            "load_s": load_s,
            "prompt_tokens": n_prompt,
            "gen_tokens": n_gen,
            "prefill_tok_s": median(&mut prefill),
            "decode_tok_s": decode_tok_s,
            "weight_bytes_per_token": bytes,
            "bandwidth_floor_ms": floor_ms,
            // Time per decoded token as a multiple of the floor.
            "decode_vs_floor": floor_ms.map(|f| 1e3 / decode_tok_s / f),
            "peak_rss_mib": peak_rss_mib(),
            // GPU dispatches of the first and of the last decode step (the attention merge
            // joins once the cache outgrows one decode chunk).
            "dispatches_per_token": match &model {
                LoadedModel::Gpu(m) => Some([
                    m.dispatches_per_token(n_prompt),
                    m.dispatches_per_token(n_prompt + n_gen - 1),
                ]),
                LoadedModel::Cpu(_) => None,
            },
        })
    );
    Ok(())
}

/// The arguments as UTF-8 strings; one that is not is named (by position, shown lossily).
fn utf8_args(raw: impl Iterator<Item = std::ffi::OsString>) -> CliResult<Vec<String>> {
    raw.enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|a| {
                CliError(format!(
                    "argument {} ({:?}) is not valid UTF-8",
                    i + 1,
                    a.to_string_lossy()
                ))
            })
        })
        .collect()
}

fn run(raw: &[String]) -> CliResult<()> {
    let Some((cmd, rest)) = raw.split_first() else {
        return fail("usage: slm <tokenize|logits|generate|bench> --model FILE ...");
    };
    let args = Args::parse(rest)?;
    match cmd.as_str() {
        "tokenize" => cmd_tokenize(&args),
        "logits" => cmd_logits(&args),
        "generate" => cmd_generate(&args),
        "bench" => cmd_bench(&args),
        other => fail(format!(
            "unknown subcommand `{other}` (tokenize, logits, generate, bench)"
        )),
    }
}

pub fn main() {
    // A bug must still end in one line and exit code 2, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("slm: internal error: {info}");
        std::process::exit(2);
    }));
    let r = utf8_args(std::env::args_os().skip(1)).and_then(|raw| run(&raw));
    if let Err(CliError(msg)) = r {
        eprintln!("slm: {msg}");
        std::process::exit(2);
    }
}
