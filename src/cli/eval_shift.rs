//! `longtail eval --test-dist`: accuracy under test-time label shift, plain averaging vs SADE's
//! test-time self-supervised aggregation, one column per test distribution (docs/sade.md §2–§3).

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use longtail::sade::shift::{self, ShiftConfig, ShiftEvaluator, ShiftResult};

use super::eval::{Args, EvalContext};

/// Evaluates under test-time label shift and prints the table (or JSON), and the plot.
pub fn run(args: &Args, ctx: &EvalContext) -> Result<()> {
    let spec = args.test_dist.as_deref().unwrap_or("all");
    let dists = shift::parse_distributions(spec)?;
    let test = &ctx.splits.test;
    let (oh, ow) = ctx
        .eval_transform
        .augment
        .output_size(test.height, test.width);
    let config = ShiftConfig::for_run(&ctx.config, oh, ow)?;
    let agg = config.aggregator;
    eprintln!(
        "test-time aggregation: lr {} wd {} momentum {}{} batch {} epochs <= {}{}; blur p {}",
        agg.sgd.lr,
        agg.sgd.weight_decay,
        agg.sgd.momentum,
        if agg.sgd.nesterov { " nesterov" } else { "" },
        agg.batch_size,
        agg.max_epochs,
        agg.stop_below.map_or(String::new(), |w| format!(
            ", stop when a weight rounds below {w}"
        )),
        config.strong.blur_probability
    );
    let evaluator = ShiftEvaluator::new(
        &ctx.loaded.model,
        test,
        &ctx.loaded.class_counts,
        &ctx.shots,
        &ctx.eval_transform,
        config,
        &ctx.device,
    )?;
    let mut results = Vec::with_capacity(dists.len());
    for d in dists {
        let start = Instant::now();
        let r = evaluator
            .run(d)
            .with_context(|| format!("test distribution {d}"))?;
        eprintln!(
            "{:<11} n={:<5} plain {:6.2}  aggregated {:6.2}  weights [{}]  {} epoch(s){}  {:.1}s",
            r.distribution,
            r.samples,
            100.0 * r.plain.overall,
            100.0 * r.aggregated.overall,
            fmt_weights(&r.weights),
            r.epochs,
            if r.stopped_early { " (stopped)" } else { "" },
            start.elapsed().as_secs_f64()
        );
        results.push(r);
    }
    let method = ctx.config.method.name.as_str();
    let experts: Vec<&str> = if method == "sade" && ctx.loaded.config.model.num_experts == 3 {
        vec!["forward", "uniform", "backward"]
    } else {
        vec![]
    };
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the plot directory {}", dir.display()))?;
        let path = dir.join("test_dist.png");
        let title = format!("{method} on {}: test-time label shift", ctx.dataset);
        crate::plots::shift::write_png(&results, &path, &title, &experts)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        let c = evaluator.config();
        let out = serde_json::json!({
            "method": method,
            "dataset": ctx.config.data.dataset,
            "checkpoint": args.checkpoint,
            "experts": ctx.loaded.config.model.num_experts,
            "expert_names": experts,
            "test_time": {
                "lr": c.aggregator.sgd.lr,
                "momentum": c.aggregator.sgd.momentum,
                "nesterov": c.aggregator.sgd.nesterov,
                "weight_decay": c.aggregator.sgd.weight_decay,
                "batch_size": c.aggregator.batch_size,
                "max_epochs": c.aggregator.max_epochs,
                "stop_below": c.aggregator.stop_below,
                "entropy_weight": c.aggregator.entropy_coef,
                "blur_probability": c.strong.blur_probability,
                "label_shift_seed": c.shift_seed,
            },
            "distributions": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_table(
        &mut std::io::stdout().lock(),
        method,
        &ctx.dataset.to_string(),
        &experts,
        &results,
    )?;
    Ok(())
}

fn fmt_weights(w: &[f64]) -> String {
    w.iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table: one column per distribution; rows: images, plain and aggregated accuracy (overall,
/// many, medium, few), the learned weights and the epochs run.
fn print_table(
    out: &mut impl Write,
    method: &str,
    dataset: &str,
    experts: &[&str],
    results: &[ShiftResult],
) -> Result<()> {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
    writeln!(
        out,
        "{method} on {dataset} under test-time label shift: top-1 % (many/medium/few: mean per-class accuracy in the group)"
    )?;
    let mut line = |name: &str, cells: Vec<String>| -> std::io::Result<()> {
        write!(out, "{name:<22}")?;
        for c in cells {
            write!(out, "{c:>8}")?;
        }
        writeln!(out)
    };
    line(
        "",
        results
            .iter()
            .map(|r| crate::plots::shift::short_name(&r.distribution))
            .collect(),
    )?;
    line(
        "images",
        results.iter().map(|r| r.samples.to_string()).collect(),
    )?;
    type Pick = fn(&shift::Accuracy) -> Option<f64>;
    let groups: [(&str, Pick); 4] = [
        ("all", |a| Some(a.overall)),
        ("many", |a| a.many),
        ("medium", |a| a.medium),
        ("few", |a| a.few),
    ];
    for (label, agg) in [("plain", false), ("aggregated", true)] {
        for (g, pick) in groups {
            line(
                &format!("{label} {g}"),
                results
                    .iter()
                    .map(|r| pct(pick(if agg { &r.aggregated } else { &r.plain })))
                    .collect(),
            )?;
        }
    }
    let e = results.first().map_or(0, |r| r.weights.len());
    for i in 0..e {
        let name = experts
            .get(i)
            .map_or_else(|| format!("weight expert {i}"), |n| format!("weight {n}"));
        line(
            &name,
            results
                .iter()
                .map(|r| format!("{:.3}", r.weights[i]))
                .collect(),
        )?;
    }
    line(
        "epochs",
        results
            .iter()
            .map(|r| format!("{}{}", r.epochs, if r.stopped_early { "*" } else { "" }))
            .collect(),
    )?;
    writeln!(
        out,
        "plain = mean of the experts' logits; aggregated = weights learned on the unlabeled shifted set (two strong views, docs/sade.md §2); * = stopped early by the rounded-weight rule"
    )?;
    Ok(())
}
