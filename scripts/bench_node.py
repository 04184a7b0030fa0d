"""Benchmark the DICOM node against the file road, in one run, on the same series.

Node: a real Orthanc (temporary, localhost) as the destination and ``ctmri serve`` as child processes; N phantom
series of S slices are sent to the node by C-STORE over ``--associations`` concurrent associations (as a router
forwards series as they arrive). Per series: latency from its last instance acknowledged by the node to Orthanc's
acknowledgement of the derived series' last instance (from the node's journal; every derived series is then
checked in Orthanc); overall: series per minute from the first send to the last derived series stored.
File road: the same series written as DICOM folders and converted by ``ctmri convert --dicom`` in this process
(model load included, as a user runs it; the interpreter start is not).
Prints one JSON line; ``throughput_ratio`` = node series/min / file series/min.
``--dcmtk``: DCMTK on both sides instead (the issue-29 load): ``--associations`` ``storescu`` processes at once,
each sending its share one series per process, and ``storescp`` as the destination (each instance under a unique
name); checked: every derived series delivered exactly once, a sent journal row each, the spool back to empty; the
node's RSS after the first 2 series sent and at the end.

    PYTHONPATH=. python scripts/bench_node.py --series 8 --slices 16 --size 64
    PYTHONPATH=. python scripts/bench_node.py --dcmtk --series 20 --slices 3 --size 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicom_net import (  # noqa: E402
    NodeProcess,
    Orthanc,
    Storescp,
    c_store,
    dcmtk_store,
    free_port,
    journal_rows,
    phantom_series,
    spool_footprint,
    wait_for,
    write_series,
)


def tiny_checkpoint(path: Path, size: int, ngf: int, blocks: int = 2) -> Path:
    """Two untrained ResNet generators (``ngf``, ``blocks`` residual blocks, ``size`` px frames) with their
    contract (speed does not depend on the weights)."""
    import torch

    from ctmri_monai.io.checkpoint_file import atomic_torch_save
    from ctmri_monai.networks import define_generator
    from ctmri_monai.spec import CTIntensity, ModelSpec, NetworkSpec, SliceGeometry

    torch.manual_seed(0)
    spec = ModelSpec(network=NetworkSpec(backbone="resnet", ngf=ngf, n_blocks=blocks, num_downs=5),
                     ct=CTIntensity(window=(-1000.0, 1000.0)),
                     geometry=SliceGeometry(image_size=size, framing="spacing", pixdim=(6.0, 6.0)))
    data = {f"generator_{d}": define_generator(**spec.generator_kwargs()).state_dict() for d in ("ct2mri", "mri2ct")}
    atomic_torch_save(data | {"model_spec": spec.state_dict()}, path)
    return path


def run_node(work: Path, checkpoint: Path, series: list[list], associations: int) -> dict:
    port = free_port()
    orthanc = Orthanc(work / "orthanc", port)
    node = NodeProcess(checkpoint, work / "spool", port, "--allow-aet", "ORTHANC", "--destination",
                       f"ORTHANC@127.0.0.1:{orthanc.dicom}", "--idle-seconds", "30")
    try:
        sent: dict[str, float] = {}

        def feed(share: list[list]) -> None:
            for s in share:
                assert c_store(s, port) == [0] * len(s), "the node refused an instance"
                sent[str(s[0].SeriesInstanceUID)] = time.time()

        t0 = time.time()
        threads = [threading.Thread(target=feed, args=(series[k::associations],)) for k in range(associations)]
        for t in threads:
            t.start()

        def delivered() -> dict[str, float] | None:
            """When Orthanc acknowledged each derived series' last instance (the node's journal, read cheaply:
            polling Orthanc itself would take CPU from what is measured)."""
            rows = {r["series_uid"]: r["sent_at"] for r in journal_rows(work / "spool") if r["status"] == "sent"}
            return rows if len(rows) == len(series) else None

        done = wait_for(delivered, 1800, "every derived series", every=0.05)
        for t in threads:
            t.join()
        found = orthanc.request("POST", "/tools/find", b'{"Level": "Series", "Query": {}, "Expand": true}')
        synthetic = [x for x in found if x["MainDicomTags"].get("SeriesDescription", "").startswith("SYNTHETIC")]
        assert len(synthetic) == len(series) and all(len(x["Instances"]) == len(series[0]) for x in synthetic)
        total = max(done.values()) - t0
        latency = sorted(done[k] - sent[k] for k in sent)
        return {"seconds": round(total, 2), "series_per_min": round(60 * len(series) / total, 2),
                "latency_median_s": round(latency[len(latency) // 2], 2), "latency_max_s": round(latency[-1], 2)}
    finally:
        node.kill(15)
        orthanc.stop()


def run_dcmtk(work: Path, checkpoint: Path, series: list[list], clients: int) -> dict:
    """The node between ``clients`` concurrent storescu processes and a storescp (see the module docstring)."""
    import pydicom

    files = [write_series(s, work / "src" / f"s{k:03d}") for k, s in enumerate(series)]
    uids = {str(s[0].SeriesInstanceUID) for s in series}
    dest, port = Storescp(work / "received"), free_port()
    node = NodeProcess(checkpoint, work / "spool", port, "--allow-aet", "ORTHANC", "--destination",
                       f"DEST@127.0.0.1:{dest.port}", "--idle-seconds", "30")
    try:
        codes: list[int] = []

        def feed(k: int) -> None:
            for j, share in enumerate(files[k::clients]):
                codes.append(dcmtk_store(share, port, work / f"storescu-{k}-{j}.log").wait(timeout=600))

        def sent() -> dict[str, dict]:
            return {r["series_uid"]: r for r in journal_rows(work / "spool") if r["status"] == "sent"
                    and r["series_uid"] in uids}

        t0 = time.time()
        threads = [threading.Thread(target=feed, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        rss_2 = wait_for(lambda: node.rss_kib() if len(sent()) >= 2 else None, 1800, "2 series sent", every=0.05)
        rows = wait_for(lambda: (lambda r: r if len(r) == len(series) else None)(sent()), 1800,
                        "every derived series", every=0.05)
        total = max(r["sent_at"] for r in rows.values()) - t0
        rss_end = node.rss_kib()
        for t in threads:
            t.join(timeout=600)
        sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dest.received()]
        assert codes == [0] * len(series), f"storescu exit codes {codes}"
        assert len(sops) == len(set(sops)) == sum(map(len, series)), "an instance lost or received twice"
        assert all(r["output_series_uid"] for r in rows.values())
        wait_for(lambda: spool_footprint(work / "spool") == (0, 0), 60, "the spool emptied")
        return {"seconds": round(total, 2), "series_per_min": round(60 * len(series) / total, 2),
                "rss_after_2_kib": rss_2, "rss_end_kib": rss_end, "rss_ratio": round(rss_end / rss_2, 3),
                "instances_received": len(sops), "duplicates": len(sops) - len(set(sops))}
    finally:
        node.kill(15)
        dest.stop()


def run_files(work: Path, checkpoint: Path, series: list[list]) -> dict:
    from ctmri_monai.apps.cli import main as ctmri

    folder = work / "files"
    for k, s in enumerate(series):
        for j, ds in enumerate(s):
            (folder / f"s{k:03d}").mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"s{k:03d}" / f"{j:04d}.dcm", enforce_file_format=True)
    t0 = time.perf_counter()
    status = ctmri(["convert", str(folder), "--direction", "ct2mri", "--checkpoint", str(checkpoint), "--output-dir",
                    str(work / "out"), "--dicom", "--device", "cpu", "--no-progress"])
    total = time.perf_counter() - t0
    assert status == 0, "ctmri convert failed"
    return {"seconds": round(total, 2), "series_per_min": round(60 * len(series) / total, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks (9: the paper's ResNet-9)")
    parser.add_argument("--associations", type=int, default=4, help="concurrent associations feeding the node")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: a tiny untrained one)")
    parser.add_argument("--dcmtk", action="store_true",
                        help="storescu processes in, storescp out, instead of pynetdicom in and Orthanc out")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="ctmri-bench-node-") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(work / "m.pt", args.size,
                                                                                    args.ngf, args.blocks)
        series = [phantom_series("CT", args.slices, args.size, seed=k) for k in range(args.series)]
        node = (run_dcmtk if args.dcmtk else run_node)(work, checkpoint, series, args.associations)
        files = run_files(work, checkpoint, series)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "series": args.series,
                      "slices": args.slices, "size": args.size, "ngf": args.ngf, "blocks": args.blocks,
                      "associations": args.associations, "client": "dcmtk" if args.dcmtk else "pynetdicom",
                      "node": node, "files": files,
                      "throughput_ratio": round(node["series_per_min"] / files["series_per_min"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
