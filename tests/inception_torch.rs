//! Our FID Inception equals pytorch-fid's `InceptionV3` (`use_fid_inception=True`, resize and
//! normalization on) on the same random but fixed weights and inputs, loaded from the
//! safetensors and the `.pth` file PyTorch wrote; the resize equals `F.interpolate(...,
//! mode="bilinear", align_corners=False)`; a weights file with one tensor removed, renamed or
//! misshapen is refused with an error naming it. Needs the venv of scripts/setup-python.sh.

mod common;

use burn::prelude::*;
use std::path::Path;
use std::process::Command;
use wgan_train::inception::{InceptionV3, resize_bilinear};

/// Writes pytorch-fid's FID Inception with random weights (He-scaled convolutions so that
/// activations keep their scale through the 94 layers; random BatchNorm affine parameters and
/// running statistics), as safetensors and as a PyTorch `.pth`, plus its features for fixed
/// images and the resize of those images, and three broken copies of the weights.
const MAKE: &str = r#"
import json, sys
import numpy as np
import torch, torch.nn.functional as F
from safetensors.torch import save_file
from pytorch_fid import inception as I

out = sys.argv[1]
sys.path.insert(0, sys.argv[2])
torch.manual_seed(0)
# fid_inception_v3() without its download (scripts/get-inception.py builds it the same way).
net = __import__("get-inception").fid_architecture()
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2); m.running_var.uniform_(0.5, 1.5)
I.fid_inception_v3 = lambda: net
model = I.InceptionV3([I.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                      normalize_input=True, use_fid_inception=True).eval()
state = {k: v.contiguous() for k, v in net.state_dict().items()}
save_file(state, f"{out}/inception.safetensors")
torch.save(net.state_dict(), f"{out}/inception.pth")
name = "Mixed_6b.branch7x7_2.conv.weight"
removed = dict(state); del removed[name]
renamed = dict(state); renamed[name + "s"] = renamed.pop(name)
misshapen = dict(state); misshapen[name] = torch.zeros(128, 128, 7, 1)
for tag, s in [("removed", removed), ("renamed", renamed), ("misshapen", misshapen)]:
    save_file(s, f"{out}/{tag}.safetensors")
g = torch.Generator().manual_seed(1)
rgb = torch.rand(2, 3, 40, 56, generator=g)
gray = torch.rand(1, 1, 32, 32, generator=g)
with torch.no_grad():
    feats = torch.cat([model(rgb)[0], model(gray.repeat(1, 3, 1, 1))[0]]).flatten(1)
    resized = [F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
               for x in (rgb, gray)]
    small = F.interpolate(rgb, size=(17, 23), mode="bilinear", align_corners=False)
json.dump({"rgb": rgb.flatten().tolist(), "gray": gray.flatten().tolist(),
           "features": feats.flatten().tolist(),
           "resized": [r.flatten().tolist() for r in resized], "small": small.flatten().tolist()},
          open(f"{out}/expected.json", "w"))
"#;

fn tensor(values: &serde_json::Value, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let v: Vec<f32> = serde_json::from_value(values.clone()).unwrap();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// max |a - b| / max |b|.
fn relative(a: &Tensor<2>, b: &Tensor<2>) -> f32 {
    let diff: f32 = (a.clone() - b.clone()).abs().max().into_scalar();
    diff / b.clone().abs().max().into_scalar::<f32>()
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<2> {
    let n = t.shape().num_elements();
    t.reshape([1, n])
}

#[test]
fn features_equal_pytorch_fid_and_loading_is_strict() {
    let Some(python) = common::torch_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(&python)
        .args(["-c", MAKE])
        .arg(dir.path())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
        .output()
        .unwrap();
    if !made.status.success() {
        let stderr = String::from_utf8_lossy(&made.stderr);
        assert!(
            std::env::var("CI").is_err() || !stderr.contains("No module named 'pytorch_fid'"),
            "under CI this must run: {stderr}"
        );
        assert!(stderr.contains("No module named"), "{stderr}");
        println!("skipped: {python} lacks pytorch-fid: run scripts/setup-python.sh");
        return;
    }
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("expected.json")).unwrap()).unwrap();
    let device = Device::flex();
    let rgb = tensor(&expected["rgb"], [2, 3, 40, 56], &device);
    let gray = tensor(&expected["gray"], [1, 1, 32, 32], &device);

    // The resize, to 299 (up) and to 17 x 23 (down), against F.interpolate.
    let theirs = |v: &serde_json::Value, shape| flat(tensor(v, shape, &device));
    let up = relative(
        &flat(resize_bilinear(rgb.clone(), 299, 299)),
        &theirs(&expected["resized"][0], [2, 3, 299, 299]),
    );
    let up_gray = relative(
        &flat(resize_bilinear(gray.clone(), 299, 299)),
        &theirs(&expected["resized"][1], [1, 1, 299, 299]),
    );
    let down = relative(
        &flat(resize_bilinear(rgb.clone(), 17, 23)),
        &theirs(&expected["small"], [2, 3, 17, 23]),
    );
    assert!(
        up < 1e-6 && up_gray < 1e-6 && down < 1e-6,
        "resize: {up} {up_gray} {down}"
    );

    // Features from both weight files.
    let theirs = tensor(&expected["features"], [3, 2048, 1, 1], &device).reshape([3, 2048]);
    for file in ["inception.safetensors", "inception.pth"] {
        let net = InceptionV3::load(&dir.path().join(file), &device).unwrap();
        let ours = Tensor::cat(
            vec![net.features(rgb.clone()), net.features(gray.clone())],
            0,
        );
        let error = relative(&ours, &theirs);
        println!("{file}: features within {error:e} (relative to the largest)");
        assert!(
            error < 1e-4,
            "{file}: features differ by {error:e} of the largest"
        );
    }

    // Strict loading.
    for (tag, says) in [
        ("removed", "mixed_6b.branch7x7_2.conv.weight"),
        ("renamed", "mixed_6b.branch7x7_2.conv.weight"),
        ("misshapen", "mixed_6b.branch7x7_2.conv.weight"),
    ] {
        let error = InceptionV3::load(&dir.path().join(format!("{tag}.safetensors")), &device)
            .err()
            .unwrap_or_else(|| panic!("{tag}: loaded"));
        let message = format!("{error:#}");
        assert!(message.contains(says), "{tag}: {message}");
    }
    let missing = InceptionV3::load(Path::new("no/such/inception.pth"), &device).unwrap_err();
    assert!(
        format!("{missing:#}").contains("get-inception"),
        "{missing:#}"
    );
}
