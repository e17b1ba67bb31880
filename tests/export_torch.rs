//! The exported safetensors load into the PyTorch peer's generator (../shared/peer/torch_wgan.py)
//! and give the same images. Needs python with torch (see `common::torch_python`).

mod common;

use burn::prelude::*;
use std::path::Path;
use wgan_train::model::Generator;
use wgan_train::pytorch::export_generator;

const CHECK: &str = r#"
import json, struct, sys
sys.path.insert(0, sys.argv[1])
import torch
from torch_wgan import G

def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"F32": torch.float32, "I64": torch.int64}[info["dtype"]]
        t = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out

spec = json.load(open(sys.argv[3]))
g = G(spec["size"], spec["channels"], z=spec["z_dim"], g=spec["width"])
g.load_state_dict(load_safetensors(sys.argv[2]), strict=True)
g.eval()
z = torch.tensor(spec["z"]).reshape(-1, spec["z_dim"])
with torch.no_grad():
    y = g(z).flatten()
ours = torch.tensor(spec["out"])
print(float((y - ours).abs().max()))
"#;

#[test]
fn exported_generator_loads_in_pytorch_and_gives_the_same_images() {
    let Some(python) = common::torch_python() else {
        return;
    };
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peer");
    let device = Device::flex();
    device.seed(9);
    let (size, channels, z_dim, width) = (32, 3, 16, 8);
    // Move BatchNorm statistics away from their initial values with a few training forwards.
    let ad = Device::flex().autodiff();
    let generator = Generator::new(size, channels, z_dim, width, &ad);
    for _ in 0..3 {
        let z = Tensor::<2>::random(
            [8, z_dim],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &ad,
        );
        let _ = generator.forward(z);
    }
    let z = Tensor::<2>::random(
        [4, z_dim],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let out = generator.valid().forward(z.clone());
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("g.safetensors");
    export_generator(&generator, 3, &st).unwrap();
    let spec = serde_json::json!({
        "size": size, "channels": channels, "z_dim": z_dim, "width": width,
        "z": z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
        "out": out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let stdout = common::python_stdout(&python, CHECK, &[peer.as_path(), &st, &spec_path]);
    let diff: f64 = stdout.trim().lines().last().unwrap().parse().unwrap();
    println!("max abs difference PyTorch vs Burn: {diff}");
    assert!(diff < 1e-4, "PyTorch output differs by {diff}");
}
