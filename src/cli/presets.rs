//! `longtail presets`: every named recipe.

/// Arguments of `longtail presets`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print this preset's full config as TOML.
    pub name: Option<String>,
}

/// Run `longtail presets`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.name {
        Some(n) => print!("{}", longtail::registry::preset(&n)?.to_toml()?),
        None => {
            for p in longtail::registry::presets() {
                println!("{:<26} {}", p.name, p.summary);
            }
            println!(
                "{:<26} the <method>.imagenet-lt recipe on your own lists (train.txt, test.txt under --data-dir), classes from the lists",
                "<method>.image-list"
            );
        }
    }
    Ok(())
}
