"""Benchmark (not a test): `imaging audit OUT --export EXPORT` vs ``zgrep -F -i -f needles``.

Builds, in a work folder, a 1,000-patient export of header-only DICOM files (one a
patient, in patient-named folders, identities drawn from name lists) and a 10,000-file
output of the kinds a pipeline writes (``.nii.gz`` volumes, ``.json`` sidecars,
``.csv`` reports, ``.png`` overlays with a text chunk; tiny each, named by hex key),
with a few planted leaks written plainly so both tools can find them. Then times:

- the needles from the export (folder names + headers, the fast reader);
- our scan of the 10,000 files (each read decoded: NIfTI header fields, parsed JSON,
  CSV cells, PNG chunks), in this process, one core;
- ``zgrep -F -l -f needles`` over the same files (the same needle strings, one a
  line), which decompresses ``.gz`` files and greps bytes: one grep a file, each
  compiling the needle list, so it is timed on every ``--sample``-th file;
- ``grep -F -i -l -f needles`` in one process over all files' raw bytes (``.gz`` not
  decoded): a lower bound for any scan of these bytes.

Prints files/s of each and the ratios (our time / theirs; the goal is <= 2 against
zgrep). Best of ``--repeat``.

    .venv/bin/python benchmarks/audit.py [--patients 1000] [--files 10000] [--repeat 2] [--sample 20] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FAMILY = ["O'Brien", "Müller", "Lindqvist", "Nakamura", "Okonkwo", "D'Angelo", "Andersson", "Johansson",
          "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson", "Svensson", "Gustafsson",
          "Pettersson", "Jonsson", "Jansson", "Hansson", "Bengtsson", "Jönsson", "Lindberg", "Jakobsson",
          "Magnusson", "Lindström", "Olofsson", "Lindgren", "Axelsson", "Bergström", "Lundberg", "Lind",
          "Lundgren", "Mattsson", "Berglund", "Fredriksson", "Sandberg", "Henriksson", "Forsberg",
          "Sjöberg", "Wallin", "Engström", "Eklund", "Danielsson", "Lundqvist", "Håkansson", "Björk",
          "Bergman", "Gunnarsson", "Holm", "Wikström", "Samuelsson", "Isaksson", "Fransson", "Bergqvist",
          "Nyström", "Holmberg", "Arvidsson", "Löfgren", "Söderberg"]
GIVEN = ["Seamus", "Jürgen", "Karin", "Hideo", "Adaeze", "Anna", "Eva", "Maria", "Lars", "Karl", "Erik",
         "Per", "Nils", "Sofia", "Elsa", "Astrid", "Ingrid", "Johan", "Gustav", "Oskar", "Linnea", "Maja",
         "Ebba", "Saga", "Alva", "Klara", "Agnes", "Freja", "Hugo", "Viktor", "Emil", "Axel", "Olle",
         "Sixten", "Ture", "Sten", "Britt", "Majken", "Gunnel", "Solveig"]
INSTITUTIONS = ["St Brigid Infirmary", "Norrland University Hospital", "Skane Regional Clinic",
                "Vastra Gotaland Imaging Centre", "Uppsala Akademiska Radiology"]
ADDRESSES = ["12 Harbour Road, Galway", "Storgatan 4, 90185 Umea", "Sjukhusvagen 1, 22185 Lund",
             "Blå stråket 5, 41345 Goteborg", "Sjukhusvagen 10, 75185 Uppsala"]
PLANTED = 10


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"


def build_export(root: Path, patients: int, rng: random.Random) -> None:
    """One header-only CT file a patient, in a folder named the way real exports do."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    for i in range(patients):
        name = _person(rng)
        birth = f"{rng.randint(1930, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber = f"ACX{rng.randrange(10**8):08d}"
        ds.InstitutionName = rng.choice(INSTITUTIONS)
        ds.InstitutionAddress = rng.choice(ADDRESSES)
        ds.ReferringPhysicianName = _person(rng)
        ds.OperatorsName = _person(rng)
        ds.PatientName = name
        ds.PatientID = f"MRN{rng.randrange(10**7):07d}"
        ds.PatientBirthDate = birth
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        folder = root / f"{name.upper()}_{birth}" / "CT"
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"IM{i:05d}", enforce_file_format=True)


def build_output(root: Path, files: int, rng: random.Random, leaks: list[str]) -> None:
    """``files`` tiny outputs (a quarter each NIfTI, JSON, CSV, PNG); ``leaks`` planted plainly."""
    import nibabel as nib
    import numpy as np
    from PIL import Image, PngImagePlugin

    root.mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4))
    img.header["descrip"] = "imaging ct volume"
    nib.save(img, str(root / "template.nii.gz"))
    nifti = (root / "template.nii.gz").read_bytes()
    (root / "template.nii.gz").unlink()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "imaging review")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "template.png", pnginfo=info)
    png = (root / "template.png").read_bytes()
    (root / "template.png").unlink()
    step = max(1, files // max(1, len(leaks)))
    for i in range(files):
        key = f"{rng.getrandbits(64):016x}"
        leak = leaks[i // step] if i % step == step // 2 and i // step < len(leaks) else ""
        kind = i % 4
        sub = root / key[:2]
        sub.mkdir(exist_ok=True)
        if kind == 0:
            (sub / f"{key}.nii.gz").write_bytes(nifti)
        elif kind == 1:
            row = {"series_key": key, "spacing": [0.7, 0.7, 2.5], "n_instances": rng.randint(20, 400),
                   "EchoTime": 0.0123, "note": leak or "ok"}
            (sub / f"{key}.json").write_text(json.dumps(row))
        elif kind == 2:
            lines = ["series_key,subject_key,status,volume_ml,reason"]
            lines += [f"{rng.getrandbits(64):016x},{rng.getrandbits(64):016x},ok,{rng.uniform(1, 900):.2f},"
                      for _ in range(5)]
            lines.append(f"{key},{rng.getrandbits(64):016x},error,,{leak or 'ValueError in (0020,0037)'}")
            (sub / f"{key}.csv").write_text("\n".join(lines) + "\n")
        else:
            (sub / f"{key}.png").write_bytes(png)
        if leak and kind in (0, 3):  # kinds zgrep cannot read as text: put it in a sibling log
            (sub / f"{key}.log").write_text(f"loaded {leak}\n")


def ours(export: Path, out: Path) -> tuple[float, float, int, set[str], list[str]]:
    from imaging.audit import build_needles, scan_paths

    t0 = time.perf_counter()
    needles = build_needles([], exports=[export])
    list(needles.find("compile"))  # the one regular expression is compiled on first use
    t1 = time.perf_counter()
    hits = scan_paths([out], needles)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(needles), {h.where for h in hits}, sorted(needles.rules)


def _grep(out: Path, files: list[str], cmd: list[str]) -> tuple[float, set[str]]:
    t0 = time.perf_counter()
    run = subprocess.run(["xargs", "-0", *cmd], input="\0".join(files), cwd=out,
                         capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, {str(out / line) for line in run.stdout.splitlines() if line}


def baselines(out: Path, needles_file: Path, sample: int) -> tuple[float, float, set[str]]:
    """(zgrep seconds a file, one-process grep seconds for all files, grep's files with hits).

    zgrep runs one grep a file, and grep compiles the whole needle list each time
    (~0.1 s for 16,000 needles), so it is timed on every ``sample``-th file and
    given per file. ``grep -r``-style, one process over every file's raw bytes (no
    decompression: a lower bound for any byte scan) is timed on all files.
    """
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    t_zgrep, _ = _grep(out, files[::sample], ["zgrep", "-F", "-l", "-f", str(needles_file)])
    t_grep, hits = _grep(out, files, ["grep", "-F", "-i", "-l", "-f", str(needles_file)])
    return t_zgrep / len(files[::sample]), t_grep, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sample", type=int, default=20, help="time zgrep on every n-th file")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="imaging-audit-bench-"))
    rng = random.Random(1957)
    export, out = work / "export", work / "out"
    if not export.is_dir():
        t = time.perf_counter()
        build_export(export, args.patients, rng)
        print(f"export: {args.patients} patients written in {time.perf_counter() - t:.1f} s")
    shutil.rmtree(out, ignore_errors=True)
    # Real identities of the export, written plainly (given family, no DICOM separators)
    # so that both tools must find them.
    from imaging.audit.identities import export_identities

    ids = export_identities(export)
    names = [" ".join(reversed(v.split("^"))) for v in sorted(ids["PatientName"])[: PLANTED // 2]]
    leaks = names + sorted(ids["PatientID"])[: PLANTED - len(names)]
    t = time.perf_counter()
    build_output(out, args.files, rng, leaks)
    n_files = sum(1 for p in out.rglob("*") if p.is_file())
    print(f"output: {n_files} files written in {time.perf_counter() - t:.1f} s")

    best_needles = best_scan = best_zgrep = best_grep = float("inf")
    for _ in range(args.repeat):
        t_needles, t_scan, n_needles, our_hits, forms = ours(export, out)
        best_needles, best_scan = min(best_needles, t_needles), min(best_scan, t_scan)
        needles_file = work / "needles.txt"
        needles_file.write_text("\n".join(forms) + "\n", encoding="utf-8")
        t_zgrep, t_grep, grep_hits = baselines(out, needles_file, args.sample)
        best_zgrep, best_grep = min(best_zgrep, t_zgrep * n_files), min(best_grep, t_grep)
    print(f"needles: {n_needles} forms from {args.patients} patients, read in {best_needles:.2f} s")
    print(f"ours        : {best_scan:7.2f} s {n_files / best_scan:7.0f} files/s  "
          f"{len(our_hits)} files with hits (planted: {PLANTED})")
    print(f"zgrep -F    : {best_zgrep:7.2f} s {n_files / best_zgrep:7.0f} files/s  "
          f"(timed on every {args.sample}th file)")
    print(f"grep -F -i  : {best_grep:7.2f} s {n_files / best_grep:7.0f} files/s  "
          f"{len(grep_hits)} files with hits (one process, raw bytes, .gz not decoded)")
    print(f"ratio ours / zgrep: {best_scan / best_zgrep:.3f}; ours / one-process grep: "
          f"{best_scan / best_grep:.1f}; with reading the export: {(best_scan + best_needles) / best_zgrep:.3f}")
    print(f"files grep named and we did not: {len(grep_hits - our_hits)}; we named and grep did not: "
          f"{len(our_hits - grep_hits)}")

if __name__ == "__main__":
    main()
