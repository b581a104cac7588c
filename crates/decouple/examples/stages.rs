//! Every second stage on one finished run, with wall times: the numbers of docs/baselines.md §12.
//!
//! ```sh
//! cargo run --release -- train --preset ce.fmnist-lt --out /tmp/ce-fm --quiet
//! cargo run --release -p longtail-decouple --example stages -- /tmp/ce-fm [STAGE ...]
//! ```
//!
//! Without STAGE arguments it runs `crt lws tau-norm la wb`; a stage already stored in the run is
//! read back (delete `RUN/stage-*` to measure again).

use std::time::Instant;

use candle_core::Device;
use longtail_decouple::{apply, Stage, StageOptions};

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let run = args.next().ok_or("usage: stages RUN [STAGE ...]")?;
    let mut stages: Vec<String> = args.collect();
    if stages.is_empty() {
        stages = ["crt", "lws", "tau-norm", "la", "wb"]
            .map(String::from)
            .to_vec();
    }
    println!("| stage | overall | many | medium | few | wall time |\n|---|---|---|---|---|---|");
    let mut first = true;
    for s in stages {
        let stage: Stage = s.parse()?;
        let start = Instant::now();
        let r = apply(run.as_ref(), &stage, &StageOptions::default(), &Device::Cpu)?;
        let secs = start.elapsed().as_secs_f64();
        if first {
            let b = &r.before_test.report;
            println!(
                "| run as trained | {} | {} | {} | {} | |",
                pct(Some(b.accuracy)),
                pct(b.many),
                pct(b.medium),
                pct(b.few)
            );
            first = false;
        }
        let a = &r.test.report;
        let tau = r.tau.map_or(String::new(), |t| format!(" (τ = {t})"));
        println!(
            "| {stage}{tau} | {} | {} | {} | {} | {secs:.1} s{} |",
            pct(Some(a.accuracy)),
            pct(a.many),
            pct(a.medium),
            pct(a.few),
            if r.reused { ", stored" } else { "" }
        );
        for n in &r.notes {
            eprintln!("{stage}: {n}");
        }
    }
    Ok(())
}
