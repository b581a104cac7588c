//! The `longtail` command-line tool: a thin layer over the library crates.

mod cli;
mod plots;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Training allocates and frees activation-sized blocks every op: keep them in the heap
    // instead of mmap/munmap per op (+23 % ResNet-32 train img/s, see longtail-kernels).
    // LONGTAIL_DEFAULT_MALLOC=1 keeps glibc's defaults (to measure what the tuning gives).
    if std::env::var_os("LONGTAIL_DEFAULT_MALLOC").is_none() {
        longtail_kernels::tune_allocator();
    }
    // candle's element-wise ops run on its own worker pool, whose threads spin-wait 25,000
    // rounds after every op before they sleep. Between candle ops our kernels run on rayon's
    // threads, and a spinning candle worker takes a core from them (4 % of a ResNet-32 step's
    // samples were that spin; 208 → 242 img/s with 200 rounds, medians of four alternating runs
    // of `bench train` on 2 cores). A value set by the user wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: at the start of `main`, before this process starts any thread.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200") };
    }
    // LONGTAIL_ISA caps the SIMD level of our kernels (e.g. `avx2` on an AVX-512 machine);
    // a value this CPU cannot run is refused here rather than silently ignored.
    if let Err(e) = longtail_kernels::isa_from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins anyhow's context chain with ": "; candle errors can span lines.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
