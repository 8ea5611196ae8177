//! Runs the fuzz targets on stable Rust, without libFuzzer: every file of `fuzz/corpus/TARGET`
//! first, then random mutations of them for a time budget. Coverage does not guide the
//! mutations, so this finds less than `cargo fuzz run`, but CI can run it on any toolchain.
//!
//!   replay [SECONDS_PER_TARGET] [TARGET...]
//!
//! A panic stops the run with exit code 1 and writes the input that caused it to
//! `fuzz/artifacts/TARGET/`. Replay it with `cargo fuzz run TARGET FILE`, or copy it into the
//! corpus and run `replay 0 TARGET`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest mutated input, in bytes.
const MAX_INPUT_BYTES: usize = 4096;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = match args.next() {
        Some(value) => value.parse().unwrap_or_else(|_| {
            eprintln!("invalid seconds {value:?}: expected a number such as 20");
            std::process::exit(2);
        }),
        None => 10.0,
    };
    let mut targets: Vec<String> = args.collect();
    if targets.is_empty() {
        targets = tunefleet_fuzz::TARGETS
            .iter()
            .map(|t| t.to_string())
            .collect();
    }
    for target in &targets {
        if !tunefleet_fuzz::TARGETS.contains(&target.as_str()) {
            eprintln!(
                "unknown fuzz target {target:?}: expected one of {:?}",
                tunefleet_fuzz::TARGETS
            );
            std::process::exit(2);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in &targets {
        run(root, target, Duration::from_secs_f64(seconds));
    }
}

fn run(root: &Path, target: &str, budget: Duration) {
    let corpus = read_corpus(&root.join("corpus").join(target));
    if corpus.is_empty() {
        eprintln!("no corpus in fuzz/corpus/{target}: add at least one input file");
        std::process::exit(2);
    }
    for (path, input) in &corpus {
        guarded(
            root,
            target,
            input,
            &format!("corpus file {}", path.display()),
        );
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = XorShift(seed);
    let started = Instant::now();
    let mut iterations = 0u64;
    while started.elapsed() < budget {
        let base = &corpus[rng.below(corpus.len())].1;
        let other = &corpus[rng.below(corpus.len())].1;
        let input = mutate(base, other, &mut rng);
        guarded(
            root,
            target,
            &input,
            &format!("crash-{seed:x}-{iterations}"),
        );
        iterations += 1;
    }
    println!(
        "fuzz {target}: {} corpus inputs and {iterations} mutations in {:.1} s, seed {seed:x}, no panic",
        corpus.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Runs one input; on a panic, saves the input and exits 1.
fn guarded(root: &Path, target: &str, input: &[u8], name: &str) {
    let outcome = std::panic::catch_unwind(|| tunefleet_fuzz::run_target(target, input));
    if outcome.is_ok() {
        return;
    }
    let dir = root.join("artifacts").join(target);
    let file_name = name.rsplit('/').next().unwrap_or(name).replace(' ', "-");
    let path: PathBuf = dir.join(file_name);
    let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    match saved {
        Ok(()) => eprintln!(
            "fuzz {target}: panic on {name}; input saved to {}",
            path.display()
        ),
        Err(err) => eprintln!("fuzz {target}: panic on {name}; failed to save the input: {err}"),
    }
    std::process::exit(1);
}

fn read_corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut corpus: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect();
    corpus.sort();
    corpus
}

/// Applies one to four random edits: flip a bit, set a byte to an edge value, insert or delete
/// a run, or splice in part of another input.
fn mutate(base: &[u8], other: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut input = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'[', b'='][rng.below(8)];
            }
            2 => {
                let at = rng.below(input.len() + 1);
                let run = rng.below(8) + 1;
                let byte = rng.next() as u8;
                input.splice(at..at, std::iter::repeat_n(byte, run));
            }
            3 if !input.is_empty() => {
                let at = rng.below(input.len());
                let end = (at + rng.below(16) + 1).min(input.len());
                input.drain(at..end);
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + rng.below(64) + 1).min(other.len());
                let at = rng.below(input.len() + 1);
                input.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let at = rng.below(input.len() + 1);
                input.truncate(at);
            }
        }
    }
    input.truncate(MAX_INPUT_BYTES);
    input
}

/// Marsaglia's xorshift64: fast, and reproducible from the seed the run prints.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
