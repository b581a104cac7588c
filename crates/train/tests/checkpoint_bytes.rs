//! Byte-reproducible checkpoints: the same state saved twice is the same file, and the file is
//! still what `safetensors` and candle read.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarMap};
use longtail_train::{checkpoint, TrainError};

/// The tensors `NAMES`, of three dtypes (so the storage order by dtype alignment is exercised),
/// created in `NAMES` order or in reverse.
fn varmap(reverse: bool) -> VarMap {
    let vm = VarMap::new();
    let mut order: Vec<(usize, &str)> = NAMES.iter().copied().enumerate().collect();
    if reverse {
        order.reverse();
    }
    for (k, name) in order {
        let dtype = [DType::F32, DType::F64, DType::BF16][k % 3];
        vm.get(
            (2, k + 1),
            name,
            Init::Const(0.25 * k as f64 - 1.0),
            dtype,
            &Device::Cpu,
        )
        .unwrap();
    }
    vm
}

const NAMES: [&str; 7] = [
    "backbone.conv1.weight",
    "backbone.bn1.running_mean",
    "backbone.bn1.running_var",
    "experts.0.linear.weight",
    "experts.1.linear.weight",
    "Z.upper",
    "a.lower",
];

/// 40 entries through a `HashMap`, whose iteration order differs from map to map: the old
/// writer (`safetensors::serialize`'s `HashMap` metadata) practically never wrote them twice in
/// the same order.
fn metadata() -> BTreeMap<String, String> {
    let m: HashMap<String, String> = (0..40)
        .map(|i| (format!("key{i:02}"), format!("value \"{i}\" ✓")))
        .collect();
    m.into_iter().collect()
}

fn momentum() -> BTreeMap<String, Tensor> {
    BTreeMap::from([(
        "backbone.conv1.weight".to_string(),
        Tensor::full(0.5f32, (2, 1), &Device::Cpu).unwrap(),
    )])
}

#[test]
fn saving_the_same_state_twice_gives_identical_bytes() -> Result<(), TrainError> {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata();
    let vm = varmap(false);
    let mut files = vec![];
    for (k, vm) in [&vm, &vm, &vm, &varmap(true)].into_iter().enumerate() {
        let p = dir.path().join(format!("{k}.safetensors"));
        // A fresh metadata map each time, as a new process would build it.
        let meta: BTreeMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect();
        checkpoint::save(&p, vm, Some(&momentum()), &meta)?;
        files.push(std::fs::read(&p).unwrap());
    }
    for (k, f) in files.iter().enumerate().skip(1) {
        assert!(f == &files[0], "save {k} differs from save 0");
    }

    // The header: `__metadata__` first, its keys sorted, padded to 8 bytes.
    let bytes = &files[0];
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(
        header.starts_with("{\"__metadata__\":{\"format\":"),
        "{header}"
    );
    let at: Vec<usize> = (0..40)
        .map(|i| header.find(&format!("\"key{i:02}\"")).unwrap())
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "metadata keys not sorted"
    );

    // Read back by safetensors, candle and checkpoint::load.
    let (_, st_meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut want = meta.clone();
    want.insert("format".into(), checkpoint::FORMAT.into());
    let got: BTreeMap<String, String> = st_meta.metadata().clone().unwrap().into_iter().collect();
    assert_eq!(got, want);
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    assert_eq!(st.len(), NAMES.len() + 1);
    let ck = checkpoint::load(&dir.path().join("0.safetensors"), &Device::Cpu)?;
    assert_eq!(ck.metadata, want);
    assert_eq!(ck.tensors.len(), NAMES.len());
    let data = vm.data().lock().unwrap();
    for name in NAMES {
        let (a, b) = (&ck.tensors[name], data[name].as_tensor());
        assert_eq!(a.dtype(), b.dtype(), "{name}");
        assert_eq!(
            a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
            b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
            "{name}"
        );
    }
    assert_eq!(
        ck.momentum["backbone.conv1.weight"].to_vec2::<f32>()?,
        [[0.5], [0.5]]
    );
    Ok(())
}

#[test]
fn to_bytes_is_safetensors_serialize_with_its_order_fixed() -> Result<(), TrainError> {
    let vm = varmap(false);
    let data = vm.data().lock().unwrap();
    let tensors: Vec<(&str, &Tensor)> = data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_tensor()))
        .collect();
    // Without metadata: byte for byte what the safetensors crate writes.
    let ours = checkpoint::to_bytes(tensors.iter().copied(), &BTreeMap::new())?;
    let theirs = safetensors::serialize(tensors.iter().copied(), None).unwrap();
    assert!(ours == theirs, "differs from safetensors::serialize");
    // With metadata: the same data section after a longer header.
    let meta = metadata();
    let with = checkpoint::to_bytes(tensors.iter().copied(), &meta)?;
    let hashed: HashMap<String, String> = meta.clone().into_iter().collect();
    let theirs = safetensors::serialize(tensors.iter().copied(), Some(hashed)).unwrap();
    let data_of =
        |b: &[u8]| b[8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize..].to_vec();
    assert!(data_of(&with) == data_of(&theirs));
    assert_eq!(with.len(), theirs.len());
    // Two tensors of one name are refused.
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
    let e = checkpoint::to_bytes([("x", &t), ("x", &t)], &meta).unwrap_err();
    assert!(e.to_string().contains("two tensors are named `x`"), "{e}");
    Ok(())
}
