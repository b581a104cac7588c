//! Integration tests: every fast op against candle's stock ops (forward and all gradients through
//! `loss.backward()`), on the shapes the backbones use, plus argument errors and determinism.

use candle_core::{DType, Device, Tensor, Var, D};
use longtail_kernels::{
    add_relu, batch_norm_backward, batch_norm_eval, batch_norm_train, conv2d, conv2d_input_grad,
    conv2d_weight_grad, max_pool2d, max_pool2d_backward, relu_backward, update_running_stats,
    with_isa, Isa, KernelError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// Uniform(-1, 1) tensor from a seeded generator (the CPU device RNG cannot be seeded).
fn rand_t(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max|a − b| / max|b|`: relative error in the max norm (elementwise relative error is
/// meaningless for entries near zero).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a: Vec<f32> = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

// ---------------------------------------------------------------- conv2d

/// One conv case: batch, c_in, c_out, h, w, kernel, stride, padding, groups.
#[derive(Clone, Copy, Debug)]
struct ConvCase(
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// Forward, dx and dw of [`conv2d`] vs `Tensor::conv2d`, through `backward()` on a weighted sum.
fn check_conv(case: ConvCase, seed: u64) -> R<()> {
    let ConvCase(n, c_in, c_out, h, w, k, s, p, g) = case;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Var::from_tensor(&rand_t(&mut rng, &[n, c_in, h, w]))?;
    let wt = Var::from_tensor(&(rand_t(&mut rng, &[c_out, c_in / g, k, k]) * 0.3)?)?;
    let ours = conv2d(&x, &wt, s, p, g)?;
    let stock = x.conv2d(&wt, p, s, 1, g)?;
    assert_eq!(ours.dims(), stock.dims(), "{case:?}");
    let r = rand_t(&mut rng, stock.dims());
    let go = (&ours * &r)?.sum_all()?.backward()?;
    let gs = (&stock * &r)?.sum_all()?.backward()?;
    let tol = 1e-4;
    assert_close(&format!("{case:?} y"), &ours, &stock, tol);
    assert_close(
        &format!("{case:?} dx"),
        go.get(&x).unwrap(),
        gs.get(&x).unwrap(),
        tol,
    );
    assert_close(
        &format!("{case:?} dw"),
        go.get(&wt).unwrap(),
        gs.get(&wt).unwrap(),
        tol,
    );
    Ok(())
}

#[test]
fn conv_resnet32_shapes_match_stock() -> R<()> {
    let cases = [
        ConvCase(2, 3, 16, 32, 32, 3, 1, 1, 1),  // stem
        ConvCase(2, 16, 16, 32, 32, 3, 1, 1, 1), // stage 1
        ConvCase(2, 16, 32, 32, 32, 3, 2, 1, 1), // stage 2 entry
        ConvCase(2, 32, 32, 16, 16, 3, 1, 1, 1),
        ConvCase(2, 32, 64, 16, 16, 3, 2, 1, 1), // stage 3 entry
        ConvCase(2, 64, 64, 8, 8, 3, 1, 1, 1),
        ConvCase(2, 16, 24, 32, 32, 3, 2, 1, 1), // reduced-width experts
        ConvCase(2, 24, 24, 16, 16, 3, 1, 1, 1),
        ConvCase(2, 24, 48, 16, 16, 3, 2, 1, 1),
        ConvCase(2, 48, 48, 8, 8, 3, 1, 1, 1),
        ConvCase(2, 16, 32, 32, 32, 1, 2, 0, 1), // option-B shortcut
        ConvCase(2, 1, 16, 28, 28, 3, 1, 1, 1),  // Fashion-MNIST stem
        ConvCase(2, 16, 32, 28, 28, 3, 2, 1, 1),
        ConvCase(2, 32, 64, 14, 14, 3, 2, 1, 1),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, i as u64)?;
    }
    Ok(())
}

#[test]
fn conv_resnet50_shapes_match_stock() -> R<()> {
    let cases = [
        ConvCase(2, 3, 64, 16, 16, 7, 2, 3, 1), // 7x7 stem
        ConvCase(2, 64, 64, 4, 4, 1, 1, 0, 1),
        ConvCase(2, 64, 64, 4, 4, 3, 1, 1, 1),
        ConvCase(2, 64, 256, 4, 4, 1, 1, 0, 1),
        ConvCase(2, 256, 128, 4, 4, 1, 1, 0, 1),
        ConvCase(2, 128, 128, 4, 4, 3, 2, 1, 1),
        ConvCase(2, 256, 512, 4, 4, 1, 2, 0, 1), // downsample shortcut
        ConvCase(1, 512, 512, 2, 2, 3, 1, 1, 1),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, 100 + i as u64)?;
    }
    Ok(())
}

#[test]
fn conv_grouped_32_groups_match_stock() -> R<()> {
    let cases = [
        ConvCase(2, 128, 128, 5, 5, 3, 1, 1, 32), // ResNeXt 32x4d
        ConvCase(2, 128, 128, 6, 6, 3, 2, 1, 32),
        ConvCase(1, 64, 64, 4, 4, 1, 1, 0, 32),
        ConvCase(2, 32, 64, 5, 7, 3, 1, 1, 32), // 1 input, 2 outputs per group
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, 200 + i as u64)?;
    }
    Ok(())
}

#[test]
fn conv_odd_sizes_and_batch_one_match_stock() -> R<()> {
    let cases = [
        ConvCase(1, 3, 5, 7, 5, 3, 2, 1, 1),
        ConvCase(1, 4, 4, 5, 5, 3, 2, 0, 1),
        ConvCase(3, 2, 3, 9, 6, 3, 1, 0, 1),
        ConvCase(1, 3, 4, 11, 13, 7, 2, 3, 1),
        ConvCase(1, 2, 2, 3, 3, 3, 1, 2, 1), // padding wider than the kernel reach
        ConvCase(1, 2, 2, 1, 1, 3, 1, 1, 1), // 1x1 input
        ConvCase(1, 3, 2, 4, 4, 1, 3, 0, 1),
        ConvCase(2, 3, 4, 6, 5, 5, 1, 2, 1), // 5x5 same padding
        ConvCase(1, 2, 3, 2, 3, 7, 1, 3, 1), // 7x7 same padding on a 2x3 image
    ];
    for (i, c) in cases.into_iter().enumerate() {
        check_conv(c, 300 + i as u64)?;
    }
    Ok(())
}

#[test]
fn conv_gradient_only_where_needed() -> R<()> {
    // A plain tensor input (an image batch) gets no dx; the weight still gets dw.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = rand_t(&mut rng, &[2, 3, 6, 6]);
    let w = Var::from_tensor(&rand_t(&mut rng, &[4, 3, 3, 3]))?;
    let grads = conv2d(&x, &w, 1, 1, 1)?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    let want = x.conv2d(&w, 1, 1, 1, 1)?.sum_all()?.backward()?;
    assert_close("dw", grads.get(&w).unwrap(), want.get(&w).unwrap(), 1e-4);
    Ok(())
}

#[test]
fn conv_accepts_non_contiguous_input() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let x = rand_t(&mut rng, &[3, 2, 5, 5]).transpose(0, 1)?; // (2, 3, 5, 5), strided
    let w = rand_t(&mut rng, &[4, 3, 3, 3]);
    assert!(!x.is_contiguous());
    assert_close(
        "y",
        &conv2d(&x, &w, 1, 1, 1)?,
        &x.conv2d(&w, 1, 1, 1, 1)?,
        1e-4,
    );
    Ok(())
}

// ---------------------------------------------------------------- batch norm

/// Reference training batch norm written from candle primitives (PyTorch `BatchNorm2d.train()`).
fn ref_bn_train(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
) -> R<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .mean_keepdim(3)?
        .mean_keepdim(2)?
        .mean_keepdim(0)?;
    let y = xc
        .broadcast_div(&(var.clone() + eps)?.sqrt()?)?
        .broadcast_mul(&g.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, mean.flatten_all()?, var.flatten_all()?))
}

fn check_bn_train(shape: &[usize], relu: bool, seed: u64) -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = shape[1];
    // Offset and scale the input so mean and variance are far from 0 and 1.
    let x = Var::from_tensor(&((rand_t(&mut rng, shape) * 3.0)? + 2.0)?)?;
    let g = Var::from_tensor(&(rand_t(&mut rng, &[c]) + 1.5)?)?;
    let b = Var::from_tensor(&rand_t(&mut rng, &[c]))?;
    let (y, m, v) = batch_norm_train(&x, &g, &b, 1e-5, relu)?;
    let (yr, mr, vr) = ref_bn_train(&x, &g, &b, 1e-5, relu)?;
    let what = format!("{shape:?} relu={relu}");
    assert_close(&format!("{what} y"), &y, &yr, 1e-4);
    assert_close(&format!("{what} mean"), &m, &mr, 1e-5);
    assert_close(&format!("{what} var"), &v, &vr, 1e-5);
    let r = rand_t(&mut rng, shape);
    let go = (&y * &r)?.sum_all()?.backward()?;
    let gr = (&yr * &r)?.sum_all()?.backward()?;
    for (name, var) in [("dx", &x), ("dgamma", &g), ("dbeta", &b)] {
        assert_close(
            &format!("{what} {name}"),
            go.get(var).unwrap(),
            gr.get(var).unwrap(),
            1e-4,
        );
    }
    Ok(())
}

#[test]
fn batch_norm_train_matches_reference() -> R<()> {
    let shapes: [&[usize]; 7] = [
        &[2, 16, 32, 32],
        &[2, 32, 16, 16],
        &[3, 64, 8, 8],
        &[2, 24, 16, 16],
        &[1, 3, 5, 7],
        &[5, 48, 1, 1],
        &[2, 256, 2, 2],
    ];
    for (i, s) in shapes.iter().enumerate() {
        check_bn_train(s, false, 400 + i as u64)?;
        check_bn_train(s, true, 500 + i as u64)?;
    }
    Ok(())
}

#[test]
fn batch_norm_train_stats_are_detached_and_biased() -> R<()> {
    // Channel 0 holds 1, 2, 3, 4: mean 2.5, biased variance 1.25 (unbiased would be 5/3).
    let x = Tensor::from_vec(
        vec![1f32, 2., 9., 9., 3., 4., 9., 9.],
        (2, 2, 2, 1),
        &Device::Cpu,
    )?;
    let g = Tensor::ones(2, DType::F32, &Device::Cpu)?;
    let b = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
    let (_, m, v) = batch_norm_train(&x, &g, &b, 1e-5, false)?;
    assert_eq!(m.to_vec1::<f32>()?, vec![2.5, 9.0]);
    assert_eq!(v.to_vec1::<f32>()?, vec![1.25, 0.0]);
    assert!(!m.track_op() && !v.track_op());
    Ok(())
}

#[test]
fn batch_norm_eval_matches_reference() -> R<()> {
    for (i, relu) in [false, true].into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(600 + i as u64);
        let (n, c, h, w) = (2, 16, 5, 3);
        let x = Var::from_tensor(&(rand_t(&mut rng, &[n, c, h, w]) * 2.0)?)?;
        let g = Var::from_tensor(&(rand_t(&mut rng, &[c]) + 1.5)?)?;
        let b = Var::from_tensor(&rand_t(&mut rng, &[c]))?;
        let rm = rand_t(&mut rng, &[c]);
        let rv = (rand_t(&mut rng, &[c]) + 1.5)?;
        let y = batch_norm_eval(&x, &g, &b, &rm, &rv, 1e-5, relu)?;
        let c4 = (1, c, 1, 1);
        let yr = x
            .broadcast_sub(&rm.reshape(c4)?)?
            .broadcast_div(&(&rv + 1e-5)?.sqrt()?.reshape(c4)?)?
            .broadcast_mul(&g.reshape(c4)?)?
            .broadcast_add(&b.reshape(c4)?)?;
        let yr = if relu { yr.relu()? } else { yr };
        assert_close("eval y", &y, &yr, 1e-5);
        let r = rand_t(&mut rng, &[n, c, h, w]);
        let go = (&y * &r)?.sum_all()?.backward()?;
        let gr = (&yr * &r)?.sum_all()?.backward()?;
        for (name, var) in [("dx", &x), ("dgamma", &g), ("dbeta", &b)] {
            assert_close(
                &format!("eval {name}"),
                go.get(var).unwrap(),
                gr.get(var).unwrap(),
                1e-4,
            );
        }
    }
    Ok(())
}

#[test]
fn running_stats_update_follows_pytorch() -> R<()> {
    let dev = Device::Cpu;
    let rm = Tensor::new(&[0f32, 1.0], &dev)?;
    let rv = Tensor::new(&[1f32, 2.0], &dev)?;
    let bm = Tensor::new(&[2f32, -1.0], &dev)?;
    let bv = Tensor::new(&[3f32, 0.5], &dev)?;
    let (m, v) = update_running_stats(&rm, &rv, &bm, &bv, 4, 0.1)?;
    // m = 0.9·rm + 0.1·bm; v = 0.9·rv + 0.1·bv·4/3.
    let (m, v) = (m.to_vec1::<f32>()?, v.to_vec1::<f32>()?);
    for (got, want) in m
        .iter()
        .zip([0.2f32, 0.8])
        .chain(v.iter().zip([1.3f32, 1.8 + 0.2 / 3.0]))
    {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert!(matches!(
        update_running_stats(&rm, &rv, &bm, &bv, 1, 0.1),
        Err(KernelError::TooFewValues { count: 1 })
    ));
    Ok(())
}

// ---------------------------------------------------------------- add + relu

#[test]
fn add_relu_matches_stock() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(700);
    let a = Var::from_tensor(&rand_t(&mut rng, &[3, 16, 9, 9]))?;
    let b = Var::from_tensor(&rand_t(&mut rng, &[3, 16, 9, 9]))?;
    let y = add_relu(&a, &b)?;
    let yr = (a.as_tensor() + b.as_tensor())?.relu()?;
    assert_close("y", &y, &yr, 0.0);
    let r = rand_t(&mut rng, &[3, 16, 9, 9]);
    let go = (&y * &r)?.sum_all()?.backward()?;
    let gr = (&yr * &r)?.sum_all()?.backward()?;
    assert_close("da", go.get(&a).unwrap(), gr.get(&a).unwrap(), 0.0);
    assert_close("db", go.get(&b).unwrap(), gr.get(&b).unwrap(), 0.0);
    Ok(())
}

// ---------------------------------------------------------------- fallback, errors, determinism

#[test]
fn f64_takes_the_stock_path_and_agrees() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(800);
    let x = rand_t(&mut rng, &[2, 4, 6, 6]);
    let w = rand_t(&mut rng, &[8, 2, 3, 3]);
    let (x64, w64) = (x.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?);
    let y = conv2d(&x, &w, 2, 1, 2)?;
    let y64 = conv2d(&x64, &w64, 2, 1, 2)?;
    assert_eq!(y64.dtype(), DType::F64);
    assert_close("conv f64", &y, &y64, 1e-5);
    let g = (rand_t(&mut rng, &[8]) + 1.0)?;
    let b = rand_t(&mut rng, &[8]);
    let (yb, m, v) = batch_norm_train(&y, &g, &b, 1e-5, true)?;
    let (yb64, m64, v64) = batch_norm_train(
        &y64,
        &g.to_dtype(DType::F64)?,
        &b.to_dtype(DType::F64)?,
        1e-5,
        true,
    )?;
    assert_close("bn f64", &yb, &yb64, 1e-5);
    assert_close("mean f64", &m, &m64, 1e-5);
    assert_close("var f64", &v, &v64, 1e-5);
    let ye = batch_norm_eval(&y, &g, &b, &m, &v, 1e-5, false)?;
    let ye64 = batch_norm_eval(
        &y64,
        &g.to_dtype(DType::F64)?,
        &b.to_dtype(DType::F64)?,
        &m64,
        &v64,
        1e-5,
        false,
    )?;
    assert_close("eval f64", &ye, &ye64, 1e-5);
    assert_close(
        "add_relu f64",
        &add_relu(&y, &ye)?,
        &add_relu(&y64, &ye64)?,
        1e-5,
    );
    Ok(())
}

#[test]
fn bad_arguments_give_typed_errors() -> R<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 4, 5, 5), DType::F32, &dev)?;
    let w = Tensor::zeros((6, 2, 3, 3), DType::F32, &dev)?;
    assert!(matches!(
        conv2d(&x, &w, 1, 1, 1),
        Err(KernelError::ChannelMismatch {
            x_channels: 4,
            w_channels: 2,
            groups: 1
        })
    ));
    assert!(matches!(
        conv2d(&x, &w, 1, 1, 4),
        Err(KernelError::Groups {
            groups: 4,
            c_out: 6
        })
    ));
    assert!(matches!(
        conv2d(&x, &w, 1, 1, 0),
        Err(KernelError::Groups { groups: 0, .. })
    ));
    assert!(matches!(
        conv2d(&x, &w, 0, 1, 2),
        Err(KernelError::Zero { arg: "stride", .. })
    ));
    let w7 = Tensor::zeros((6, 2, 7, 7), DType::F32, &dev)?;
    assert!(matches!(
        conv2d(&x, &w7, 1, 0, 2),
        Err(KernelError::KernelTooLarge { kh: 7, .. })
    ));
    assert!(matches!(
        conv2d(&x.flatten_all()?, &w, 1, 1, 2),
        Err(KernelError::Rank {
            arg: "x",
            want: 4,
            ..
        })
    ));
    assert!(matches!(
        conv2d(&x, &w.to_dtype(DType::F64)?, 1, 1, 2),
        Err(KernelError::DType { arg: "w", .. })
    ));

    let g = Tensor::ones(4, DType::F32, &dev)?;
    let g3 = Tensor::ones(3, DType::F32, &dev)?;
    assert!(matches!(
        batch_norm_train(&x, &g3, &g, 1e-5, false),
        Err(KernelError::Shape { arg: "gamma", .. })
    ));
    assert!(matches!(
        batch_norm_train(&x, &g, &g, 0.0, false),
        Err(KernelError::Eps { .. })
    ));
    assert!(matches!(
        batch_norm_train(&x, &g, &g, f64::NAN, false),
        Err(KernelError::Eps { .. })
    ));
    let one = Tensor::zeros((1, 4, 1, 1), DType::F32, &dev)?;
    assert!(matches!(
        batch_norm_train(&one, &g, &g, 1e-5, false),
        Err(KernelError::TooFewValues { count: 1 })
    ));
    assert!(matches!(
        batch_norm_eval(&x, &g, &g, &g3, &g, 1e-5, false),
        Err(KernelError::Shape {
            arg: "running_mean",
            ..
        })
    ));
    let y = Tensor::zeros((2, 4, 5, 4), DType::F32, &dev)?;
    assert!(matches!(
        add_relu(&x, &y),
        Err(KernelError::Shape { arg: "b", .. })
    ));
    // Messages are lowercase and say what failed.
    let msg = conv2d(&x, &w, 1, 1, 4).unwrap_err().to_string();
    assert_eq!(msg, "conv2d: 4 groups do not divide 6 output channels");
    // The error converts into candle's, for callers that use `candle_core::Result`.
    let e: candle_core::Error = conv2d(&x, &w, 1, 1, 4).unwrap_err().into();
    assert!(e.to_string().contains("groups do not divide"));
    Ok(())
}

/// Forward and all gradients of a conv → BN+ReLU → conv → add+ReLU block.
fn block_grads(x: &Tensor, seed: u64) -> R<Vec<Vec<f32>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w1 = Var::from_tensor(&(rand_t(&mut rng, &[8, 8, 3, 3]) * 0.2)?)?;
    let w2 = Var::from_tensor(&(rand_t(&mut rng, &[8, 8, 3, 3]) * 0.2)?)?;
    let g = Var::ones(8, DType::F32, &Device::Cpu)?;
    let b = Var::zeros(8, DType::F32, &Device::Cpu)?;
    let h = conv2d(x, &w1, 1, 1, 1)?;
    let (h, _, _) = batch_norm_train(&h, &g, &b, 1e-5, true)?;
    let y = add_relu(&conv2d(&h, &w2, 1, 1, 1)?, x)?;
    let grads = y.sqr()?.mean_all()?.backward()?;
    let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
    for v in [&w1, &w2, &g, &b] {
        out.push(grads.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

#[test]
fn results_are_bit_identical_across_thread_counts() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(900);
    let x = rand_t(&mut rng, &[5, 8, 7, 7]);
    let base = block_grads(&x, 1)?;
    assert_eq!(base, block_grads(&x, 1)?, "two runs differ");
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let got = pool.install(|| block_grads(&x, 1).map_err(|e| e.to_string()))?;
        assert_eq!(base, got, "{threads} threads differ from the default pool");
    }
    Ok(())
}

/// A tiny conv net trained 5 SGD steps with the fast ops and with candle's stock ops from the same
/// weights: the loss curves agree, so autograd trains through every custom backward.
#[test]
fn tiny_network_trains_like_stock() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1000);
    let x = rand_t(&mut rng, &[4, 3, 8, 8]);
    let labels = Tensor::new(&[0u32, 1, 2, 1], &Device::Cpu)?;
    let init = [
        rand_t(&mut rng, &[8, 3, 3, 3]),
        rand_t(&mut rng, &[8, 8, 3, 3]),
        rand_t(&mut rng, &[3, 8]),
    ];
    let mut curves = Vec::new();
    for fast in [true, false] {
        let ws: Vec<Var> = init
            .iter()
            .map(|t| Var::from_tensor(&(t * 0.3)?))
            .collect::<Result<_, _>>()?;
        let g = Var::ones(8, DType::F32, &Device::Cpu)?;
        let b = Var::zeros(8, DType::F32, &Device::Cpu)?;
        let mut losses = Vec::new();
        for _ in 0..5 {
            let h = if fast {
                conv2d(&x, &ws[0], 1, 1, 1)?
            } else {
                x.conv2d(&ws[0], 1, 1, 1, 1)?
            };
            let h = if fast {
                batch_norm_train(&h, &g, &b, 1e-5, true)?.0
            } else {
                ref_bn_train(&h, &g, &b, 1e-5, true)?.0
            };
            let h2 = if fast {
                conv2d(&h, &ws[1], 2, 1, 1)?
            } else {
                h.conv2d(&ws[1], 1, 2, 1, 1)?
            };
            let feat = h2.mean(D::Minus1)?.mean(D::Minus1)?; // (4, 8)
            let logits = feat.matmul(&ws[2].t()?)?;
            let logp = logits.broadcast_sub(&logits.log_sum_exp(1)?.unsqueeze(1)?)?;
            let loss = logp.gather(&labels.unsqueeze(1)?, 1)?.mean_all()?.neg()?;
            losses.push(loss.to_scalar::<f32>()?);
            let grads = loss.backward()?;
            for v in ws.iter().chain([&g, &b]) {
                let gr = grads.get(v).expect("every parameter gets a gradient");
                v.set(&(v.as_tensor() - (gr * 0.5)?)?)?;
            }
        }
        curves.push(losses);
    }
    for (a, b) in curves[0].iter().zip(&curves[1]) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "fast {:?} vs stock {:?}",
            curves[0],
            curves[1]
        );
    }
    assert!(
        curves[0][4] < curves[0][0],
        "loss did not fall: {:?}",
        curves[0]
    );
    Ok(())
}

#[test]
fn direct_gradient_functions_match_autograd_and_fallback() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1100);
    for (s, p, g) in [(1, 1, 1), (2, 1, 1), (2, 0, 2)] {
        let x = Var::from_tensor(&rand_t(&mut rng, &[2, 4, 7, 7]))?;
        let w = Var::from_tensor(&rand_t(&mut rng, &[6, 4 / g, 3, 3]))?;
        let y = conv2d(&x, &w, s, p, g)?;
        let dy = rand_t(&mut rng, y.dims());
        let grads = (&y * &dy)?.sum_all()?.backward()?;
        let dx = conv2d_input_grad(&dy, &w, (7, 7), s, p, g)?;
        let dw = conv2d_weight_grad(&x, &dy, (3, 3), s, p, g)?;
        assert_close("dx", &dx, grads.get(&x).unwrap(), 1e-6);
        assert_close("dw", &dw, grads.get(&w).unwrap(), 1e-6);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let dx64 = conv2d_input_grad(&f64s(&dy), &f64s(&w), (7, 7), s, p, g)?;
        let dw64 = conv2d_weight_grad(&f64s(&x), &f64s(&dy), (3, 3), s, p, g)?;
        assert_eq!((dx64.dtype(), dw64.dtype()), (DType::F64, DType::F64));
        assert_close("dx f64", &dx, &dx64, 1e-5);
        assert_close("dw f64", &dw, &dw64, 1e-5);
    }
    let dy = Tensor::zeros((2, 6, 4, 4), DType::F32, &Device::Cpu)?;
    let w = Tensor::zeros((6, 4, 3, 3), DType::F32, &Device::Cpu)?;
    let x = Tensor::zeros((2, 4, 7, 7), DType::F32, &Device::Cpu)?;
    // A 7x7 input at stride 1 gives 7x7 outputs, not 4x4.
    assert!(matches!(
        conv2d_input_grad(&dy, &w, (7, 7), 1, 1, 1),
        Err(KernelError::Shape { arg: "dy", .. })
    ));
    assert!(matches!(
        conv2d_weight_grad(&x, &dy, (3, 3), 1, 1, 1),
        Err(KernelError::Shape { arg: "dy", .. })
    ));
    assert_eq!(
        conv2d_input_grad(&dy, &w, (7, 7), 2, 1, 1)?.dims(),
        &[2, 4, 7, 7]
    );
    assert_eq!(
        conv2d_input_grad(&dy, &w, (8, 8), 2, 1, 1)?.dims(),
        &[2, 4, 8, 8]
    );
    Ok(())
}

// ---------------------------------------------------------------- max_pool2d

/// PyTorch's max pooling by hand: −∞ padding, the gradient `g` of each output cell added at the
/// first maximum of its window (row-major). Returns (y, dx) as flat vectors.
fn ref_max_pool(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    (k, s, p): (usize, usize, usize),
    g: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![0f32; n * c * oh * ow];
    let mut dx = vec![0f32; x.len()];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(f32, usize)> = None;
                for dy in 0..k {
                    for ddx in 0..k {
                        let (iy, ix) = (
                            (oy * s + dy) as isize - p as isize,
                            (ox * s + ddx) as isize - p as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let i = plane * h * w + iy as usize * w + ix as usize;
                        if best.is_none_or(|(b, _)| x[i] > b) {
                            best = Some((x[i], i));
                        }
                    }
                }
                let (v, i) = best.unwrap();
                let o = plane * oh * ow + oy * ow + ox;
                y[o] = v;
                dx[i] += g[o];
            }
        }
    }
    (y, dx)
}

/// Forward and input gradient of `max_pool2d` (custom op) and `max_pool2d_autograd` (stock ops)
/// against [`ref_max_pool`], through `backward()` on a weighted sum.
fn check_max_pool(
    shape: [usize; 4],
    (k, s, p): (usize, usize, usize),
    x: Vec<f32>,
    seed: u64,
) -> R<()> {
    let [n, c, h, w] = shape;
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g = rand_t(&mut rng, &[n, c, oh, ow]);
    let (y_ref, dx_ref) = ref_max_pool(&x, (n, c, h, w), (k, s, p), &g.flatten_all()?.to_vec1()?);
    let y_ref = Tensor::from_vec(y_ref, (n, c, oh, ow), &Device::Cpu)?;
    let dx_ref = Tensor::from_vec(dx_ref, (n, c, h, w), &Device::Cpu)?;
    for (name, fast) in [("custom op", true), ("autograd", false)] {
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu)?)?;
        let y = if fast {
            longtail_kernels::max_pool2d(xv.as_tensor(), k, s, p)?
        } else {
            longtail_kernels::max_pool2d_autograd(xv.as_tensor(), k, s, p)?
        };
        assert_eq!(y.dims(), [n, c, oh, ow], "{name}: shape");
        assert_close(&format!("{name} y {shape:?}"), &y, &y_ref, 0.0);
        let grads = (y * &g)?.sum_all()?.backward()?;
        let dx = grads.get(xv.as_tensor()).expect("dx");
        assert_close(&format!("{name} dx {shape:?}"), dx, &dx_ref, 1e-6);
    }
    Ok(())
}

#[test]
fn max_pool_matches_pytorch_semantics_on_the_stem_and_odd_sizes() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(900);
    // The ResNet-50 stem (3/2/1) on an even and an odd size, a plain 2/2/0 pool, and 3/1/1.
    for (i, (shape, win)) in [
        ([2, 3, 16, 16], (3, 2, 1)),
        ([1, 2, 15, 13], (3, 2, 1)),
        ([2, 2, 8, 8], (2, 2, 0)),
        ([1, 2, 7, 9], (3, 1, 1)),
    ]
    .into_iter()
    .enumerate()
    {
        // Negative values too: padding must act as −∞, not 0.
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-2.0f32..1.0))
            .collect();
        check_max_pool(shape, win, x, 910 + i as u64)?;
    }
    Ok(())
}

#[test]
fn max_pool_gives_a_tied_window_gradient_to_its_first_maximum_only() -> R<()> {
    // Post-ReLU activations: many zeros and repeated values, so windows tie.
    let shape = [1, 1, 6, 6];
    let x: Vec<f32> = (0..36).map(|i| [0.0, 1.0, 1.0, 0.5][i % 4]).collect();
    check_max_pool(shape, (3, 2, 1), x.clone(), 920)?;
    // Spelled out on the first window (rows 0..1, cols 0..1 of the input, padding around):
    // values 0, 1 / 1, 1 → the gradient goes to (0, 1) alone.
    let xv = Var::from_tensor(&Tensor::from_vec(x, (1, 1, 6, 6), &Device::Cpu)?)?;
    let y = longtail_kernels::max_pool2d(xv.as_tensor(), 3, 2, 1)?;
    let first = y.flatten_all()?.narrow(0, 0, 1)?.sum_all()?;
    let dx = first
        .backward()?
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let hot: Vec<usize> = (0..36).filter(|&i| dx[i] != 0.0).collect();
    assert_eq!(hot, vec![1], "gradient of a tied window: {dx:?}");
    Ok(())
}

#[test]
fn max_pool_refuses_windows_pytorch_refuses() -> R<()> {
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu)?;
    assert!(matches!(
        longtail_kernels::max_pool2d(&x, 3, 2, 2),
        Err(KernelError::PoolWindow { padding: 2, .. })
    ));
    assert!(matches!(
        longtail_kernels::max_pool2d(&x, 7, 1, 1),
        Err(KernelError::PoolWindow { kernel: 7, .. })
    ));
    assert!(matches!(
        longtail_kernels::max_pool2d(&x, 3, 0, 1),
        Err(KernelError::Zero { arg: "stride", .. })
    ));
    assert!(matches!(
        longtail_kernels::max_pool2d(&x.flatten_all()?, 3, 2, 1),
        Err(KernelError::Rank { .. })
    ));
    Ok(())
}

// ---------------------------------------------------------------- SIMD levels

/// Bits of a tensor's values (so `-0.0` vs `0.0` and NaN payloads count as differences).
fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

/// Every non-convolution op of the crate, forward and backward (through autograd and through
/// the public backward functions), on one input; labelled bit patterns.
fn elementwise_ops(x: &Tensor, seed: u64) -> R<Vec<(String, Vec<u32>)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = x.dim(1)?;
    let gamma = (rand_t(&mut rng, &[c]) + 1.5)?;
    let beta = rand_t(&mut rng, &[c]);
    let rm = (rand_t(&mut rng, &[c]) * 0.3)?;
    let rv = (rand_t(&mut rng, &[c]) + 1.5)?;
    let dy = rand_t(&mut rng, x.dims());
    let other = rand_t(&mut rng, x.dims());
    let mut out = vec![];
    let mut push = |name: String, t: &Tensor| out.push((name, bits(t)));
    for relu in [false, true] {
        let (y, mean, var) = batch_norm_train(x, &gamma, &beta, 1e-5, relu)?;
        push(format!("bn train relu={relu} y"), &y);
        push(format!("bn train relu={relu} mean"), &mean);
        push(format!("bn train relu={relu} var"), &var);
        let ye = batch_norm_eval(x, &gamma, &beta, &rm, &rv, 1e-5, relu)?;
        push(format!("bn eval relu={relu} y"), &ye);
        for (train, y, (m, v)) in [(true, &y, (&mean, &var)), (false, &ye, (&rm, &rv))] {
            let mask = relu.then_some(y);
            let (dx, dg, db) = batch_norm_backward(x, mask, &dy, &gamma, (m, v), 1e-5, train)?;
            push(format!("bn bwd train={train} relu={relu} dx"), &dx);
            push(format!("bn bwd train={train} relu={relu} dgamma"), &dg);
            push(format!("bn bwd train={train} relu={relu} dbeta"), &db);
        }
        // The same backward through autograd: `d sum(y·dy) / dy = dy` exactly.
        let (xv, gv, bv) = (
            Var::from_tensor(x)?,
            Var::from_tensor(&gamma)?,
            Var::from_tensor(&beta)?,
        );
        let (y, mean, var) = batch_norm_train(&xv, &gv, &bv, 1e-5, relu)?;
        let grads = (&y * &dy)?.sum_all()?.backward()?;
        let (dx, dg, db) = batch_norm_backward(
            x,
            relu.then_some(&y),
            &dy,
            &gamma,
            (&mean, &var),
            1e-5,
            true,
        )?;
        assert_eq!(bits(grads.get(&xv).unwrap()), bits(&dx), "autograd dx");
        assert_eq!(bits(grads.get(&gv).unwrap()), bits(&dg), "autograd dgamma");
        assert_eq!(bits(grads.get(&bv).unwrap()), bits(&db), "autograd dbeta");
    }
    let y = add_relu(x, &other)?;
    push("add+relu y".into(), &y);
    push("relu bwd".into(), &relu_backward(&dy, &y)?);
    let (av, ov) = (Var::from_tensor(x)?, Var::from_tensor(&other)?);
    let grads = (add_relu(&av, &ov)? * &dy)?.sum_all()?.backward()?;
    push("add+relu autograd da".into(), grads.get(&av).unwrap());
    push("add+relu autograd db".into(), grads.get(&ov).unwrap());
    // Quantised input: windows with tied maxima.
    let xq = (x * 4.0)?.round()?;
    for (k, st, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let y = max_pool2d(&xq, k, st, p)?;
        let gy = rand_t(&mut rng, y.dims());
        push(format!("max pool {k}/{st}/{p} y"), &y);
        let dx = max_pool2d_backward(&xq, &gy, k, st, p)?;
        push(format!("max pool {k}/{st}/{p} dx"), &dx);
        let xv = Var::from_tensor(&xq)?;
        let grads = (max_pool2d(&xv, k, st, p)? * &gy)?.sum_all()?.backward()?;
        assert_eq!(
            bits(grads.get(&xv).unwrap()),
            bits(&dx),
            "max pool autograd dx"
        );
    }
    Ok(out)
}

/// Batch norm (train and eval, with and without ReLU, forward and backward), add + ReLU and max
/// pooling give the same bits at every SIMD level this CPU has as at `Isa::Scalar`: the loops
/// are one Rust source compiled per level, and a level must not change a result.
#[test]
fn elementwise_ops_are_bit_identical_on_every_isa() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1300);
    // Planes of 256 and 64 values (whole 16-lane chunks), 49 and 81 (a tail), and batch 1.
    for (i, shape) in [[4, 16, 16, 16], [3, 32, 8, 8], [5, 6, 7, 7], [1, 3, 9, 9]]
        .into_iter()
        .enumerate()
    {
        let x = (rand_t(&mut rng, &shape) * 2.0)?;
        let want =
            with_isa(Isa::Scalar, || elementwise_ops(&x, i as u64))?.map_err(|e| e.to_string())?;
        for level in Isa::available() {
            let got =
                with_isa(level, || elementwise_ops(&x, i as u64))?.map_err(|e| e.to_string())?;
            assert_eq!(got.len(), want.len());
            for ((name, g), (_, w)) in got.iter().zip(&want) {
                assert!(g == w, "{level} {shape:?} {name}: differs from scalar");
            }
        }
    }
    Ok(())
}

/// The public backward functions agree with candle's stock-op fallback (f64), and `with_isa`
/// refuses a level the CPU lacks.
#[test]
fn backward_functions_match_the_f64_fallback() -> R<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1400);
    let x = (rand_t(&mut rng, &[3, 5, 6, 6]) * 2.0)?;
    let gamma = (rand_t(&mut rng, &[5]) + 1.5)?;
    let beta = rand_t(&mut rng, &[5]);
    let dy = rand_t(&mut rng, x.dims());
    let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    for (relu, train) in [(true, true), (false, true), (true, false), (false, false)] {
        let (y, mean, var) = batch_norm_train(&x, &gamma, &beta, 1e-5, relu)?;
        let mask = relu.then_some(&y);
        let fast = batch_norm_backward(&x, mask, &dy, &gamma, (&mean, &var), 1e-5, train)?;
        let y64 = f64s(&y);
        let slow = batch_norm_backward(
            &f64s(&x),
            relu.then_some(&y64),
            &f64s(&dy),
            &f64s(&gamma),
            (&f64s(&mean), &f64s(&var)),
            1e-5,
            train,
        )?;
        assert_eq!(slow.0.dtype(), DType::F64);
        let what = format!("relu={relu} train={train}");
        assert_close(&format!("{what} dx"), &f64s(&fast.0), &slow.0, 1e-4);
        assert_close(&format!("{what} dgamma"), &f64s(&fast.1), &slow.1, 1e-4);
        assert_close(&format!("{what} dbeta"), &f64s(&fast.2), &slow.2, 1e-4);
    }
    let y = add_relu(&x, &beta.reshape((1, 5, 1, 1))?.broadcast_as(x.shape())?)?;
    let want = relu_backward(&f64s(&dy), &f64s(&y))?;
    assert_close("relu bwd", &f64s(&relu_backward(&dy, &y)?), &want, 0.0);
    let gy = rand_t(&mut rng, &[3, 5, 3, 3]);
    let dx = max_pool2d_backward(&x, &gy, 3, 2, 1)?;
    let dx64 = max_pool2d_backward(&f64s(&x), &f64s(&gy), 3, 2, 1)?;
    assert_close("max pool bwd", &f64s(&dx), &dx64, 1e-6);
    if Isa::detected() < Isa::Avx512 {
        assert!(matches!(
            with_isa(Isa::Avx512, || ()),
            Err(KernelError::IsaUnsupported { .. })
        ));
    }
    Ok(())
}
