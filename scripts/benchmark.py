"""Speed of MOSMOS as ratios against the plain MONAI / open_clip equivalents in the same process, and whole-scan
figures, written to one JSON.

    python scripts/benchmark.py --size tiny --json docs/benchmarks/cpu_tiny.json    # a few minutes on 2 CPU cores
    python scripts/benchmark.py --size paper --json docs/benchmarks/cpu_paper.json  # UNETR ViT-B/16 at 96^3
    python scripts/benchmark.py --only scan,onnx --size paper                       # some parts only
    python scripts/render_benchmarks.py docs/benchmarks/*.json                      # the README's table

Parts (``--only``): ``window`` (one 96^3 window: MOSMOS with and without pixel-tag attention, MONAI's UNETR;
fp32 and AMP), ``train`` (one training step: forward, both losses, backward), ``pretrain`` (one pre-training
step against open_clip's CLIP + ClipLoss), ``loader`` (the bundle's training data pipeline on the demo data: the
share of each step spent waiting for data, iterations/s against MONAI's UNETR in the same loop), ``scan``
(``mosmos segment`` on a 512x512x100 CT-like volume, per stage and peak memory) and ``onnx`` (the same scan
through ONNX Runtime). Not in the default run: ``fastmode`` (the Dice cost of ``--amp`` and ``--overlap 0.25`` on
labelled scans: ``--model DIR --datalist FILE``) and ``ddp`` (data-parallel throughput, 1 and 2 processes).

Ratios > 1 mean MOSMOS is slower. Absolute times depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import time
from pathlib import Path

import fire
import open_clip
import torch
from monai.networks.nets import UNETR
from torch.utils.flop_counter import FlopCounterMode

from mosmos_components.inference import autocast  # AMP as mosmos segment uses it: fp16 on a GPU, bf16 on a CPU
from mosmos_components.losses import MosmosPretrainLoss
from mosmos_components.networks import MosmosPretrainNet, MosmosUNETR, TrainingOutput
from mosmos_components.runtime import keep_freed_memory

SIZES = {
    "tiny": {
        "unetr": dict(
            img_size=(64, 64, 32),
            hidden_size=64,
            num_layers=4,
            num_heads=2,
            embed_dim=64,
            feature_size=8,
            decoder_heads=4,
        ),
        "clip": "mosmos-tiny-vit",
        "configs": ["train.json", "demo.json"],
    },
    "paper": {
        "unetr": dict(
            img_size=(96, 96, 96),
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            embed_dim=512,
            feature_size=16,
            decoder_heads=8,
        ),
        "clip": "ViT-B-16",
        "configs": ["train.json"],
    },
}
PARTS = ("window", "train", "pretrain", "loader", "scan", "onnx")
EXTRA_PARTS = ("fastmode", "ddp", "compile")  # not in the default run (fastmode needs --model and --datalist)
K = 14  # BTCV's classes


def _networks(size: str, device: torch.device) -> dict[str, torch.nn.Module]:
    """MOSMOS UNETR with pixel-tag attention, the same network without it, MONAI's UNETR of the same size."""
    u = SIZES[size]["unetr"]
    pta = MosmosUNETR(1, K, class_names=[f"c{i}" for i in range(K)], **u)
    pta.pta.set_class_embeddings(torch.randn(K, u["embed_dim"]))
    plain = MosmosUNETR(1, K, use_pta=False, **u)
    ref = UNETR(
        1,
        K,
        img_size=u["img_size"],
        feature_size=u["feature_size"],
        hidden_size=u["hidden_size"],
        mlp_dim=4 * u["hidden_size"],
        num_heads=u["num_heads"],
        proj_type="conv",
        norm_name="instance",
        res_block=True,
    )
    return {"mosmos_pta": pta.to(device), "mosmos_no_pta": plain.to(device), "monai_unetr": ref.to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fns: dict, repeats: int, device: torch.device, warm_up: bool = True) -> dict[str, float]:
    """Seconds per call of each of ``fns``: the fastest of ``repeats`` (noise only adds time), run in turns (one call
    of each per round, after one warm-up round unless the caller ran one), so that a machine's drift weighs on all of
    them alike."""
    if warm_up:
        for fn in fns.values():
            fn()
    _sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def window_benchmark(size: str, device: torch.device, repeats: int) -> dict:
    """Inference on one window, eager, fp32 and AMP: MOSMOS with PTA against the same network without it and
    MONAI's UNETR; also the TorchScript trace (fp32) and the CLIP+DenseCLIP score maps."""
    nets = {k: n.eval() for k, n in _networks(size, device).items()}
    u = SIZES[size]["unetr"]
    score = MosmosUNETR(1, K, class_names=[f"c{i}" for i in range(K)], pta_mode="score", **u).to(device).eval()
    score.pta.set_class_embeddings(torch.randn(K, u["embed_dim"], device=device))
    x = torch.rand(1, 1, *u["img_size"], device=device)
    out = {}
    for amp in (False, True):
        tag = "_amp" if amp else ""
        with torch.inference_mode(), autocast(device, amp):
            fns = {k: (lambda n=n: n(x)) for k, n in {**nets, "clip_denseclip_score_maps": score}.items()}
            if not amp:
                traced = torch.jit.trace(nets["mosmos_pta"], x)  # what `ckpt_export --use_trace True` writes
                fns["mosmos_pta_torchscript"] = lambda traced=traced: traced(x)
            t = _time(fns, repeats, device)
        out[f"window_seconds{tag}"] = t
        out[f"pta_infer_ratio_vs_no_pta{tag}"] = t["mosmos_pta"] / t["mosmos_no_pta"]
        out[f"pta_infer_ratio_vs_monai_unetr{tag}"] = t["mosmos_pta"] / t["monai_unetr"]
    return out


def compile_benchmark(size: str, device: torch.device, repeats: int) -> dict:
    """``mosmos segment --compile``: one window of MOSMOS with PTA, eager against the network through
    ``torch.compile`` (as :func:`mosmos_components.inference.compiled` wraps it), fp32, and the seconds the compilation
    took (its first call)."""
    net = _networks(size, device)["mosmos_pta"].eval()
    x = torch.rand(1, 1, *SIZES[size]["unetr"]["img_size"], device=device)
    with torch.inference_mode():
        fast = torch.compile(net)
        t = time.perf_counter()
        fast(x)
        _sync(device)
        seconds = time.perf_counter() - t
        times = _time({"eager": lambda: net(x), "compiled": lambda: fast(x)}, repeats, device)
    return {
        "compile_seconds": seconds,
        "window_seconds_compiled": times,
        "compile_window_ratio_vs_eager": times["compiled"] / times["eager"],
    }


def train_step_benchmark(size: str, device: torch.device, repeats: int, batch: int = 2) -> dict:
    """One training step (forward, loss, backward) on ``batch`` crops (the paper's 1 volume x 2 samples): MOSMOS
    with PTA (both losses of eq. 17) against the same network without PTA (DiceCE alone) and MONAI's UNETR; and the
    loss side alone (``train_loss_seconds``: the PTA pair's upsampling and two DiceCE terms, one DiceCE)."""
    from monai.losses import DiceCELoss

    from mosmos_components.losses import MosmosSegLoss

    nets = {k: n.train() for k, n in _networks(size, device).items()}
    u = SIZES[size]["unetr"]
    x = torch.rand(batch, 1, *u["img_size"], device=device)
    y = torch.randint(0, K, (batch, 1, *u["img_size"]), device=device)
    ours, ref = MosmosSegLoss(lambda_pta=0.8), DiceCELoss(to_onehot_y=True, softmax=True)
    out = {}
    for amp in (False, True):
        tag = "_amp" if amp else ""

        def step(net, loss, amp=amp):
            net.zero_grad(set_to_none=True)
            with autocast(device, amp):
                value = loss(net(x), y)
            value.backward()  # timing only: no optimizer step, so no gradient scaler either

        t = _time(
            {
                "mosmos_pta": lambda: step(nets["mosmos_pta"], ours),
                "mosmos_no_pta": lambda: step(nets["mosmos_no_pta"], ours),
                "monai_unetr": lambda: step(nets["monai_unetr"], ref),
            },
            repeats,
            device,
        )
        out[f"train_step_seconds{tag}"] = t
        out[f"pta_train_step_ratio_vs_no_pta{tag}"] = t["mosmos_pta"] / t["mosmos_no_pta"]
    # what PTA adds outside the network, fp32: the PTA logits' upsampling and eq. 17's two DiceCE terms against the
    # one DiceCE of a network without PTA, forward and backward, on the networks' output shapes
    pta = nets["mosmos_pta"].pta
    logits = torch.randn(batch, K, *u["img_size"], device=device)
    maps = torch.rand(batch, K, *nets["mosmos_pta"].grid, device=device)

    def loss_side(with_pta: bool) -> None:
        seg = logits.clone().requires_grad_()
        pred = TrainingOutput(seg, pta.aux_logits(maps.clone().requires_grad_(), u["img_size"])) if with_pta else seg
        ours(pred, y).backward()

    out["train_loss_seconds"] = _time(
        {"pta_pair": lambda: loss_side(True), "dicece": lambda: loss_side(False)}, repeats, device
    )
    return out


def pretrain_benchmark(size: str, device: torch.device, repeats: int, batch: int = 64) -> dict:
    """One pre-training step (forward, loss, backward) at ``batch`` against open_clip's CLIP + ClipLoss; also the
    floating-point operations of each step (``torch.utils.flop_counter``: matrix products, convolutions, attention),
    whose ratio is the floor of the time ratio: the tag decoder and the tag prompts are arithmetic the method adds,
    whatever the implementation."""
    cfg = SIZES[size]
    net = MosmosPretrainNet(cfg["clip"], decoder_heads=cfg["unetr"]["decoder_heads"], _warn_random=False)
    net = net.to(device).train()
    clip = open_clip.create_model(cfg["clip"]).to(device).train()
    s = net.image_size
    img = torch.randn(batch, 3, s, s, device=device)
    txt = torch.randint(1, 49000, (batch, net.context_length), device=device)
    tags = (torch.rand(batch, len(net.tags), device=device) > 0.8).float()
    loss_ours, loss_ref = MosmosPretrainLoss(), open_clip.ClipLoss()

    def step_ours():
        net.zero_grad(set_to_none=True)
        loss_ours(net(img, txt), tags).backward()

    def step_ref():
        clip.zero_grad(set_to_none=True)
        f_i, f_t, scale = clip(img, txt)
        loss_ref(f_i, f_t, scale).backward()

    flops = {}
    for name, fn in (("mosmos", step_ours), ("open_clip", step_ref)):  # the warm-up step, counted
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops()
    t = _time({"mosmos": step_ours, "open_clip": step_ref}, repeats, device, warm_up=False)
    return {
        "pretrain_batch": batch,
        "pretrain_step_seconds": t,
        "pretrain_step_ratio_vs_open_clip": t["mosmos"] / t["open_clip"],
        "pretrain_step_flops": flops,
        "pretrain_flop_ratio_vs_open_clip": flops["mosmos"] / flops["open_clip"],
    }


def loader_benchmark(size: str, device: torch.device, steps: int = 20, loader: str | None = None) -> dict:
    """The ``btcv_seg`` bundle's training data pipeline (its CacheDataset and loader at the size's crop and batch:
    ``train.json``, with ``demo.json`` for ``tiny``) on the demo BTCV volumes, feeding a training step (forward,
    loss, backward, AdamW; AMP on a GPU as the bundle does): the share of each iteration spent waiting for the
    next batch, and iterations/s of MOSMOS (PTA) and of MONAI's UNETR in the same loop. ``loader`` overrides the
    bundle's ``train#dataloader#_target_`` (e.g. ``ThreadDataLoader``, which the bundles do not use: its thread
    ends an epoch silently when a transform fails)."""
    import tempfile

    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss

    from mosmos_components.bundle_runner import bundles_dir
    from mosmos_components.data.synthetic import write_btcv
    from mosmos_components.losses import MosmosSegLoss

    root = bundles_dir() / "btcv_seg"
    with tempfile.TemporaryDirectory() as tmp:
        parser = ConfigParser()
        parser.read_config([str(root / "configs" / c) for c in SIZES[size]["configs"]])
        parser.update(
            {
                "bundle_root": str(root),
                "dataset_dir": str(write_btcv(Path(tmp) / "btcv")),
                "output_dir": str(Path(tmp) / "eval"),
                "device": f"$torch.device('{device}')",
            }
        )
        if loader:
            parser["train#dataloader#_target_"] = loader
        t = time.perf_counter()
        data = parser.get_parsed_content("train#dataloader")
        out = {
            "loader": type(data).__name__,
            "loader_workers": int(parser.get_parsed_content("num_workers")),
            "cache_seconds": time.perf_counter() - t,
            "loader_steps": steps,
        }
        amp = device.type == "cuda"
        nets = _networks(size, device)
        for name, loss in (
            ("mosmos_pta", MosmosSegLoss(lambda_pta=0.8)),
            ("monai_unetr", DiceCELoss(to_onehot_y=True, softmax=True)),
        ):
            net = nets[name].train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler(device.type, enabled=amp)
            wait = total = 0.0
            done = 0
            while done <= steps:  # the first iteration (workers starting) is not counted
                it = iter(data)
                while done <= steps:
                    t0 = time.perf_counter()
                    batch = next(it, None)
                    if batch is None:
                        break
                    t1 = time.perf_counter()
                    x, y = batch["image"].to(device), batch["label"].to(device)
                    opt.zero_grad(set_to_none=True)
                    with autocast(device, amp):
                        value = loss(net(x), y)
                    scaler.scale(value).backward()
                    scaler.step(opt)
                    scaler.update()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if done:
                        wait, total = wait + t1 - t0, total + time.perf_counter() - t0
                    done += 1
            out[f"iterations_per_s_{name}"] = steps / total
            if name == "mosmos_pta":
                out["loader_wait_fraction"] = wait / total
        out["train_iteration_ratio_vs_monai_unetr"] = (
            out["iterations_per_s_monai_unetr"] / out["iterations_per_s_mosmos_pta"]
        )
    return out


def scan_benchmark(
    size: str,
    device: torch.device,
    overlap: float = 0.5,
    amp: bool | None = None,
    onnx: bool = True,
    shape=(512, 512, 100),
    spacing=(0.8, 0.8, 2.5),
) -> dict:
    """``mosmos segment``'s whole path (read, preprocess, sliding window, label map back to the input grid, write)
    on a CT-like volume of ``shape`` at ``spacing`` mm, with the ``size`` network (random weights) at the
    paper's spacing (1.5 x 1.5 x 2 mm) and window: wall time per stage and the process's peak RSS (and peak GPU
    memory); with ``onnx`` (CPU, onnxruntime installed) the same scan through ONNX Runtime, its time and the
    share of voxels whose label agrees with PyTorch's."""
    import resource
    import tempfile

    import nibabel as nib
    import numpy as np

    from mosmos_components.checkpoint import save_network
    from mosmos_components.inference import load_model, segment

    u = SIZES[size]["unetr"]
    out = {
        "scan_shape": list(shape),
        "scan_spacing_mm": list(spacing),
        "overlap": overlap,
        "scan_amp": device.type == "cuda" if amp is None else bool(amp),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net = _networks(size, torch.device("cpu"))["mosmos_pta"]
        save_network(
            net,
            tmp / "models" / "model.pt",
            extra={
                "data": {"pixdim": [1.5, 1.5, 2.0], "intensity_range": [-175.0, 250.0], "modality": "ct"},
                "inference": {"roi_size": list(u["img_size"]), "overlap": overlap, "axcodes": "RAS"},
            },
        )
        del net
        rng = np.random.default_rng(0)
        xx, yy = np.mgrid[: shape[0], : shape[1]]
        body = (xx - shape[0] / 2) ** 2 + (yy - shape[1] / 2) ** 2 < (0.45 * shape[0]) ** 2  # soft tissue in air
        vol = np.where(body[..., None], rng.normal(40, 20, shape), -1000).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), tmp / "scan.nii.gz")
        del vol, body, xx, yy
        m = load_model(tmp / "models", device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = segment(
            tmp / "scan.nii.gz",
            tmp / "out",
            m,
            device=str(device),
            progress=False,
            amp=amp,
            sw_batch_size=None,  # mosmos segment's default: 4 on a GPU, 1 on a CPU
        )
        out["scan_seconds"] = time.perf_counter() - t
        out["scan_stage_seconds"] = res["done"][0]["stage_seconds"]
        out["scan_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before ONNX
        if device.type == "cuda":
            out["scan_peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            onnx = False
        if onnx and device.type == "cpu":  # the same scan through ONNX Runtime
            from mosmos_components.export import export_onnx

            export_onnx(tmp / "models" / "model.pt", tmp / "models" / "model.onnx")
            t = time.perf_counter()
            segment(tmp / "scan.nii.gz", tmp / "out_onnx", tmp / "models" / "model.onnx", device="cpu", progress=False)
            out["onnx_scan_seconds"] = time.perf_counter() - t
            out["onnx_ratio_vs_pytorch"] = out["onnx_scan_seconds"] / out["scan_seconds"]
            a = np.asarray(nib.load(tmp / "out" / "scan.nii.gz").dataobj)
            b = np.asarray(nib.load(tmp / "out_onnx" / "scan.nii.gz").dataobj)
            out["onnx_label_agreement"] = float((a == b).mean())
    return out


def _ddp_worker(rank: int, world: int, size: str, steps: int, threads: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mosmos_components.losses import MosmosSegLoss

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = _networks(size, torch.device("cpu"))["mosmos_pta"].train()
    ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)  # as multi_gpu_train.json
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    loss = MosmosSegLoss(lambda_pta=0.8)
    u = SIZES[size]["unetr"]
    x = torch.rand(2, 1, *u["img_size"])
    y = torch.randint(0, K, (2, 1, *u["img_size"]))
    for i in range(steps + 1):  # the first step (DDP's bucket set-up) is not counted
        if i == 1:
            dist.barrier()
            t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss(ddp(x), y).backward()
        opt.step()
    dist.barrier()
    if rank == 0:
        Path(out).write_text(str(time.perf_counter() - t))
    dist.destroy_process_group()


def ddp_benchmark(size: str, steps: int = 10) -> dict:
    """Data-parallel training throughput on a CPU (gloo): DDP training steps of the PTA network, batch 2 per process,
    with 1 and 2 processes sharing this machine's threads; samples per second over all processes."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    total = torch.get_num_threads()
    out = {"ddp_steps": steps, "ddp_samples_per_s": {}}
    for world in (1, 2):
        with socket.socket() as sock, tempfile.TemporaryDirectory() as tmp:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            f = str(Path(tmp) / "seconds")
            mp.spawn(_ddp_worker, args=(world, size, steps, max(1, total // world), port, f), nprocs=world)
            out["ddp_samples_per_s"][str(world)] = world * 2 * steps / float(Path(f).read_text())
    out["ddp_scaling_1_to_2"] = out["ddp_samples_per_s"]["2"] / out["ddp_samples_per_s"]["1"]
    return out


FAST_MODES = {
    "default": {},
    "amp": {"amp": True},
    "overlap_0.25": {"overlap": 0.25},
    "amp_overlap_0.25": {"amp": True, "overlap": 0.25},
    "no_crop": {"crop_foreground": False},  # windows over the whole field of view, not the box around the body
}


def fast_mode_benchmark(model: str, datalist: str, device: torch.device, split: str = "test") -> dict:
    """What the fast settings of ``mosmos segment`` cost in Dice: each labelled case of ``datalist``'s ``split``
    (a MONAI datalist JSON, e.g. the demo's ``btcv_datalist.json``) segmented by ``model`` as it is (fp32, its
    overlap, cropped to the body), with AMP, with overlap 0.25, with both, and over the whole field of view; mean
    foreground Dice against the labels (MONAI's ``compute_dice`` on the input grid) and seconds per scan of each, and
    the share of voxels whose label changes."""
    import nibabel as nib
    import numpy as np
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    from mosmos_components.inference import load_model, preprocessing, segment_scan

    cases = _json_load(datalist)[split]
    m = load_model(model, device)
    pres = {crop: preprocessing(m, crop_foreground=crop) for crop in (True, False)}
    k = len(m.class_names)
    out, labels = {}, {}
    for name, kw in FAST_MODES.items():
        kw = dict(kw)
        pre = pres[kw.pop("crop_foreground", True)]
        dice, secs, agree = [], [], []
        for case in cases:
            t = time.perf_counter()
            pred = segment_scan({"image": case["image"]}, m, device, pre=pre, **kw)["label"]
            secs.append(time.perf_counter() - t)
            truth = np.asarray(nib.load(case["label"]).dataobj).astype(np.int64)
            d = compute_dice(
                one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], k),
                one_hot(torch.from_numpy(truth)[None, None], k),
                include_background=False,
            )
            dice.append(float(torch.nanmean(d)))
            labels.setdefault(case["image"], pred)
            agree.append(float((labels[case["image"]] == pred).mean()))
        out[name] = {
            "dice": float(np.mean(dice)),
            "seconds_per_scan": float(np.mean(secs)),
            "label_agreement_vs_default": float(np.mean(agree)),
        }
    return {"fast_modes": out, "fast_mode_cases": len(cases), "fast_mode_model": str(model)}


def _json_load(path: str) -> dict:
    import json

    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _cpu_name() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main(
    size: str = "tiny",
    repeats: int = 5,
    device: str | None = None,
    only: str | tuple | None = None,
    json: str | None = None,
    overlap: float = 0.5,
    amp: bool | None = None,
    pretrain_batch: int = 64,
    loader: str | None = None,
    loader_steps: int = 20,
    model: str | None = None,
    datalist: str | None = None,
) -> None:
    """Run the parts named by ``only`` (comma-separated; all by default), print and (``--json FILE``) write the
    results. ``--amp`` applies to the scan (default: on a GPU only); the window and training-step parts always
    measure both fp32 and AMP. ``--only fastmode --model DIR --datalist FILE``: the Dice cost of the fast settings
    on labelled scans; ``--only ddp``: data-parallel throughput with 1 and 2 processes (gloo, CPU); ``--only
    compile``: one window through ``torch.compile`` against eager, and the compilation time. None of them is part
    of the default run."""
    import json as _json

    parts = PARTS if only is None else tuple(p.strip() for p in (only.split(",") if isinstance(only, str) else only))
    unknown = set(parts) - {*PARTS, *EXTRA_PARTS}
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {(*PARTS, *EXTRA_PARTS)}")
    if "fastmode" in parts and not (model and datalist):
        raise ValueError("--only fastmode needs --model (a segmentation model) and --datalist (a datalist JSON)")
    if "onnx" in parts and "scan" not in parts:  # the ONNX run is the scan's second half
        parts = (*parts, "scan")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    results = {
        "device": str(dev),
        "device_name": name,
        "size": size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        # as the mosmos commands and the bundles run (MOSMOS_SYSTEM_MALLOC=1: glibc's default, for comparison)
        "malloc_keeps_freed_memory": keep_freed_memory(),
    }
    runs = {
        "window": lambda: window_benchmark(size, dev, repeats),
        "train": lambda: train_step_benchmark(size, dev, repeats),
        "pretrain": lambda: pretrain_benchmark(size, dev, repeats, pretrain_batch),
        "loader": lambda: loader_benchmark(size, dev, loader_steps, loader),
        "scan": lambda: scan_benchmark(size, dev, overlap, amp, onnx="onnx" in parts),
        "fastmode": lambda: fast_mode_benchmark(model, datalist, dev),
        "ddp": lambda: ddp_benchmark(size),
        "compile": lambda: compile_benchmark(size, dev, repeats),
    }
    # the scan first: its peak RSS is the process's (ru_maxrss), which later parts would only raise
    for part in sorted(parts, key=lambda p: p not in ("scan", "onnx")):
        if part in runs:
            t = time.perf_counter()
            results.update(runs[part]())
            print(f"[benchmark] {part}: {time.perf_counter() - t:.1f} s", flush=True)
    print(_json.dumps(results, indent=2))
    if json:
        Path(json).parent.mkdir(parents=True, exist_ok=True)
        Path(json).write_text(_json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    fire.Fire(main)
