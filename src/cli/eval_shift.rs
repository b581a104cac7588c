//! `longtail eval --test-dist`: accuracy under test-time label shift, plain averaging vs SADE's
//! test-time self-supervised aggregation, one column per test distribution (docs/sade.md §2–§3);
//! for a BalPoE run also its known-test-prior rule (docs/balpoe.md §3.2–§3.3).

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use longtail::backbone::ExpertOutput;
use longtail::data::TestDist;
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
    let method = ctx.config.method.name.as_str();
    // BalPoE's test-agnostic variant: its prediction plus log q of each shifted set.
    let known_prior = method == "balpoe";
    let mut results = Vec::with_capacity(dists.len());
    let mut priors = Vec::with_capacity(dists.len());
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
        if known_prior {
            let a = with_known_prior(&evaluator, ctx, d, &r.class_counts)
                .with_context(|| format!("test distribution {d}: known test prior"))?;
            eprintln!(
                "{:<11} known prior {:6.2}",
                r.distribution,
                100.0 * a.overall
            );
            priors.push(Some(a));
        } else {
            priors.push(None);
        }
        results.push(r);
    }
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
        let mut out = out;
        if known_prior {
            // One entry per distribution, in the order of "distributions".
            out["known_prior"] = serde_json::to_value(
                results
                    .iter()
                    .zip(&priors)
                    .map(
                        |(r, a)| serde_json::json!({"distribution": r.distribution, "accuracy": a}),
                    )
                    .collect::<Vec<_>>(),
            )?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_table(
        &mut std::io::stdout().lock(),
        method,
        &ctx.dataset.to_string(),
        &experts,
        &results,
        &priors,
    )?;
    Ok(())
}

/// BalPoE's known-test-prior rule on the shifted set `dist` (docs/balpoe.md §3.2–§3.3, the
/// official `--posthoc_bias_correction`): the method's own prediction on the clean expert logits
/// (the product of the experts) plus `log q`, `q` the set's class counts over its size.
fn with_known_prior(
    evaluator: &ShiftEvaluator,
    ctx: &EvalContext,
    dist: TestDist,
    counts: &[usize],
) -> Result<shift::Accuracy> {
    let idx = evaluator.indices(dist)?;
    let ids = Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        &ctx.device,
    )?;
    // [E, N, C] → [n, E, C], the layout of a forward pass.
    let expert_logits = evaluator
        .clean_logits()
        .index_select(&ids, 1)?
        .transpose(0, 1)?
        .contiguous()?;
    let (n, e, _) = expert_logits.dims3()?;
    let out = ExpertOutput {
        logits: expert_logits.mean(1)?,
        features: Tensor::zeros((n, e, 1), expert_logits.dtype(), &ctx.device)?,
        expert_logits,
    };
    let scores = longtail::balpoe::with_test_prior(&ctx.objective.predict(&out)?, counts)?;
    let values: Vec<f32> = scores.flatten_all()?.to_vec1()?;
    let test = &ctx.splits.test;
    let labels: Vec<u32> = idx.iter().map(|&i| test.labels[i]).collect();
    let preds = longtail::metrics::argmax_rows(&values, test.num_classes);
    let r = longtail::metrics::classification_report(&preds, &labels, &ctx.shots)?;
    Ok(shift::Accuracy {
        overall: r.accuracy,
        many: r.many,
        medium: r.medium,
        few: r.few,
    })
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
    priors: &[Option<shift::Accuracy>],
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
    let has_prior = priors.iter().any(Option::is_some);
    if has_prior {
        for (g, pick) in groups {
            line(
                &format!("known prior {g}"),
                priors
                    .iter()
                    .map(|a| a.as_ref().map_or("-".into(), |a| pct(pick(a))))
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
    if has_prior {
        writeln!(
            out,
            "known prior = BalPoE's prediction + log q, q the shifted set's label distribution (docs/balpoe.md §3.2)"
        )?;
    }
    Ok(())
}
