"""The server's preprocessing against the evaluation transform on images not at the input size.

    PYTHONPATH=. python benchmarks/preprocess_parity.py                  # input 64, resize 72
    PYTHONPATH=. python benchmarks/preprocess_parity.py --size 32 --resize 32
    PYTHONPATH=. python benchmarks/preprocess_parity.py --model runs/x/export/model.onnx

Writes a folder of odd-sized images (`odd_folder`: 16 sizes from 8x300 to 1000x750, up- and
downscaled, square and not; RGB, grey, RGBA and palette PNGs, RGB and grey JPEGs; 96 files),
decodes each file the way the training data sources do (`pipeline.data.base.decode_image`) and
the way the server does (`serving.classify.decode_image`, from the bytes), and checks the two
decodings are the same pixels. Then it preprocesses them through torchvision's evaluation
transform (what the validate stage feeds the ONNX model) and through each server variant, runs
both batches through one ONNX model and prints, per variant, the largest difference of a
normalised pixel, the largest difference of a softmax probability and the top-1 agreement.

Variants: `server`, the server's preprocessing (`serving.preprocess`); `pillow-before`, the
Pillow resize the server used before (long side rounded, crop offset floored); `pillow-sizes`,
Pillow's resize at torchvision's sizes and crop offset (the rounding fixed, Pillow's weights
kept).

The model is `--model` (an exported ONNX classifier; its metadata gives the preprocessing) or
by default a random linear classifier over every input pixel, which no pixel escapes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.preprocessing import Preprocessing  # noqa: E402

# (width, height): down- and upscaled (20x20, 33x33, 8x300), near-square, both orientations,
# and sizes where torchvision's truncated long side (67x101, 123x101, 333x250, 70x64, 86x64,
# 640x480 at 32) or rounded crop offset (150x144, 166x144, 97x131 at 32, 86x64 at 32) differ
# from a rounded side or a floored offset, at input 64 / resize 72 or input 32 / resize 32.
ODD_SIZES = [
    (97, 131),
    (300, 200),
    (224, 225),
    (640, 480),
    (50, 400),
    (33, 33),
    (8, 300),
    (20, 20),
    (150, 144),
    (166, 144),
    (67, 101),
    (123, 101),
    (333, 250),
    (70, 64),
    (86, 64),
    (1000, 750),
]
# (Pillow mode, format): JPEG holds neither alpha nor a palette.
ODD_KINDS = [
    ("RGB", "PNG"),
    ("L", "PNG"),
    ("RGBA", "PNG"),
    ("P", "PNG"),
    ("RGB", "JPEG"),
    ("L", "JPEG"),
]


def odd_folder(root: Path, sizes=ODD_SIZES, kinds=ODD_KINDS, seed: int = 0) -> list[Path]:
    """One image file per size and kind under `root`: smooth colour fields with texture and
    noise, so resampling weights matter."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for w, h in sizes:
        for mode, fmt in kinds:
            coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float64)
            yy, xx = np.mgrid[0:h, 0:w]
            stripes = 40 * np.sin(xx * rng.uniform(0.2, 1.5) + yy * rng.uniform(0.2, 1.5))
            noisy = field + stripes[:, :, None] + rng.normal(0, 12, (h, w, 3))
            im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
            if mode == "RGBA":
                alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
                im = Image.fromarray(np.dstack([np.asarray(im), alpha]), "RGBA")
            elif mode == "P":
                im = im.quantize(64)
            else:
                im = im.convert(mode)
            path = root / f"{w}x{h}_{mode}.{fmt.lower()}"
            im.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            paths.append(path)
    return paths


def linear_onnx(path: Path, size: int, classes: int = 10, seed: int = 0) -> Path:
    """A random linear classifier over every pixel of a (N, 3, size, size) input, its logits
    spread over a few units so that probabilities move with any pixel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d = 3 * size * size
    w = rng.standard_normal((classes, d)).astype(np.float32) * np.float32(2.0 / np.sqrt(d))
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def decode_both(paths: list[Path]) -> list[np.ndarray]:
    """Each file decoded as the training data sources and as the server decode it; both must
    give the same uint8 RGB pixels (else nothing downstream can agree)."""
    from pipeline.data.base import decode_image as decode_for_training
    from serving.classify import decode_image as decode_for_serving

    arrays = []
    for p in paths:
        train = decode_for_training(p).permute(1, 2, 0).numpy()
        served = decode_for_serving(p.read_bytes(), p.name)
        if train.shape != served.shape or (train != served).any():
            raise AssertionError(f"{p.name}: training and serving decode different pixels")
        arrays.append(served)
    return arrays


def reference_batch(arrays: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """The evaluation transform's batch, as the validate stage builds it."""
    import torch

    from pipeline.data.presets import Preset, eval_transform

    preset = Preset(pre.input_size, "cifar", "none", pre.resize, pre.mean, pre.std)
    t = eval_transform(preset)
    return torch.stack([t(torch.from_numpy(a.copy()).permute(2, 0, 1)) for a in arrays]).numpy()


def pillow_before(arrays: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """The server's preprocessing before it followed torchvision: Pillow's bilinear resize with
    the long side rounded, the crop offset floored."""
    size, resize = pre.input_size, pre.resize
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    out = []
    for img in arrays:
        im = Image.fromarray(img).convert("RGB")
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
        out.append((arr - mean) / std)
    return np.stack(out)


def pillow_sizes(arrays: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """Pillow's bilinear resize at torchvision's size and crop offset (zeros outside)."""
    size = pre.input_size
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    out = []
    for img in arrays:
        oh, ow = pre.resized_shape(*img.shape[:2])
        resized = np.asarray(Image.fromarray(img).resize((ow, oh), Image.BILINEAR))
        top, left = pre.crop_origin(oh, ow)
        canvas = np.zeros((size, size, 3), np.uint8)
        r0, r1, c0, c1 = max(top, 0), min(top + size, oh), max(left, 0), min(left + size, ow)
        canvas[r0 - top : r1 - top, c0 - left : c1 - left] = resized[r0:r1, c0:c1]
        x = canvas.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        out.append((x - mean) / std)
    return np.stack(out)


def server(arrays: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    from serving.preprocess import preprocess

    return preprocess(arrays, pre)


VARIANTS = {"pillow-before": pillow_before, "pillow-sizes": pillow_sizes, "server": server}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def compare(
    paths: list[Path], model: Path, pre: Preprocessing, variants=VARIANTS
) -> dict[str, dict]:
    """Per variant: max |normalised pixel difference|, max |probability difference|, top-1
    agreement and the file with the largest probability difference, against the evaluation
    transform through the same ONNX model."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    arrays = decode_both(paths)
    ref = reference_batch(arrays, pre)
    ref_p = softmax(session.run(None, {name: ref})[0].astype(np.float64))
    out = {}
    for label, fn in variants.items():
        batch = fn(arrays, pre)
        p = softmax(session.run(None, {name: batch})[0].astype(np.float64))
        per_image = np.abs(p - ref_p).max(axis=1)
        out[label] = {
            "max_pixel_diff": float(np.abs(batch - ref).max()),
            "max_prob_diff": float(per_image.max()),
            "top1_agreement": float((p.argmax(1) == ref_p.argmax(1)).mean()),
            "worst": paths[int(per_image.argmax())].name,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="an exported ONNX classifier (default: random)")
    ap.add_argument("--size", type=int, default=64, help="input size (without --model)")
    ap.add_argument("--resize", type=int, default=72, help="resize (without --model)")
    ap.add_argument("--folder", type=Path, help="write the images here (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "odd"
        paths = odd_folder(folder)
        if args.model:
            import onnx

            meta = {p.key: p.value for p in onnx.load(str(args.model)).metadata_props}
            pre = Preprocessing.from_metadata(meta, source=str(args.model))
            model = args.model
        else:
            pre = Preprocessing(
                args.size, args.resize, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
            )
            model = linear_onnx(Path(tmp) / "linear.onnx", args.size)
        result = compare(paths, model, pre)
    print(
        json.dumps({"images": len(paths), "preprocessing": pre.to_metadata(), **result}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
