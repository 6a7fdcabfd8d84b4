"""TEMPORARY sweep driver for the toy model (will be deleted)."""

import json, os, sys, time
from pathlib import Path


def one(name, vc, kw, out, device, threads):
    import torch
    from autolabel.toyworld import train as T

    T.TOY_CONFIG["vision_cfg"].update(vc)
    s = T.TrainSettings(device=device, threads=threads, **kw)
    d = Path(out) / name
    d.mkdir(parents=True, exist_ok=True)
    logf = open(d / "log.txt", "w")

    def log(m):
        logf.write(m + "\n")
        logf.flush()

    t0 = time.time()
    T.train(s, d, log)
    res = {"name": name, "vc": vc, "kw": kw, "train_s": time.time() - t0}
    if device != "cpu" or kw.get("steps", 0) > 100:
        import open_clip
        from autolabel.models.clip import ClipModel
        from autolabel.toyworld.readout import probe

        m = T.build_model(0)
        m.load_state_dict(torch.load(d / "toy.pt"))
        m = m.to(device).eval()
        clip = ClipModel(
            m,
            open_clip.tokenizer.SimpleTokenizer(context_length=32),
            "toy",
            "sweep",
            torch.device(device),
            T.TOY_CONFIG["vision_cfg"]["image_size"],
            T.OPENAI_MEAN,
            T.OPENAI_STD,
        )
        res.update(probe(clip, 999, 300))
    log(json.dumps(res))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    import multiprocessing as mp

    jobs = json.loads(sys.argv[1])
    out = sys.argv[2]
    ctx = mp.get_context("spawn")
    ps = [
        ctx.Process(
            target=one, args=(j["name"], j["vc"], j["kw"], out, j["device"], j.get("threads", 2))
        )
        for j in jobs
    ]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    import shutil

    final = sys.argv[3] if len(sys.argv) > 3 else None
    if final:
        with open(Path(final) / "logs.txt", "w") as f:
            for j in jobs:
                lp = Path(out) / j["name"] / "log.txt"
                if lp.exists():
                    f.write(f"=== {j['name']}\n" + lp.read_text())
                pt = Path(out) / j["name"] / "toy.pt"
                if j.get("keep") and pt.exists():
                    shutil.copy(pt, Path(final) / f"{j['name']}.pt")
