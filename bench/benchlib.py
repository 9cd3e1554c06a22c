#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only, any python3 >= 3.8).

Sub-commands:
  genimage IMAGE SIZE_MIB [COMPRESSIBLE]
                              make the test image and IMAGE.sums.json;
                              COMPRESSIBLE (default 0, as bench/run.sh): the
                              fraction of the payload that is compressible
                              text instead of random data (bench/formats.sh)
  image-ok IMAGE SIZE_MIB [COMPRESSIBLE]
                              exit 0 if that image can be reused
  verify IMAGE SUMS_JSON BACKING_FILE LOOPDEV
                              check that the target holds the image
  freeport                    print a free TCP port on 127.0.0.1
  table RESULTS_TSV SIZE_BYTES TARGETS...
                              print the markdown result table
  ftable RESULTS_TSV VIRTUAL_BYTES TARGETS...
                              print bench/formats.sh's markdown table
  put-section FILE HEADING NEW_TEXT_FILE
                              replace FILE from the line HEADING to its end
                              with NEW_TEXT_FILE (append it if HEADING is absent)
  put-head FILE HEADING NEW_TEXT_FILE
                              replace FILE up to the line HEADING with
                              NEW_TEXT_FILE, keeping HEADING and what follows
"""

import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys

MIB = 1024 * 1024
SECTOR = 512
# The payload (partition contents) lives in [1 MiB, size - 1 MiB); the GPT
# structures (protective MBR, primary header + entries, backup entries +
# header) live only outside of it.  A deploy agent is allowed to rewrite the
# GPT (IPA moves the backup GPT to the end of the bigger device with
# `sgdisk -e`, which rewrites the protective MBR and the primary header), so
# the check compares the payload byte-for-byte and the GPT by content.
EDGE = 1 * MIB
CHUNK = 4 * MIB
GEN_VERSION = 2  # bump when the image layout changes: old images are remade


# --------------------------------------------------------------- genimage
def _text_pool(rng, size):
    """Compressible bytes: text made of words from a small vocabulary
    (zlib packs it about 2-3x, as it would a file system full of text and
    binaries)."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = ["".join(rng.choices(letters, k=rng.randrange(2, 11)))
             for _ in range(4096)]
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choices(vocab, k=rng.randrange(4, 16))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def genimage(path, size_mib, compressible="0"):
    size_mib = int(size_mib)
    if size_mib < 8:
        sys.exit("SIZE_MIB must be at least 8")
    comp_target = float(compressible)
    if not 0 <= comp_target <= 0.6:
        sys.exit("COMPRESSIBLE must be between 0 and 0.6")
    size = size_mib * MIB
    rng = random.Random(20240229 + size_mib)  # layout is reproducible
    tmp = path + ".tmp"
    zero = bytes(CHUNK)
    zero_bytes = 0
    comp_bytes = 0
    # Only used with COMPRESSIBLE > 0, so that the default image (bench/run.sh)
    # keeps exactly the layout it always had.
    pool = _text_pool(rng, 2 * CHUNK) if comp_target > 0 else b""
    with open(tmp, "wb") as f:
        # GPT areas at both ends stay zero here; sgdisk fills them below.
        f.write(bytes(EDGE))
        pos = EDGE
        end = size - EDGE
        # Segments of 64 KiB .. 24 MiB (at most 1/16 of the payload, so that
        # small images are mixed too), zero or random data; zero is picked
        # with p = 0.3, nudged so that ~30 % of the payload ends up zero.
        max_units = max(16, min(6 * 1024, (end - pos) // 16 // 4096))
        while pos < end:
            seg = rng.randrange(16, max_units + 1) * 4096
            seg = min(seg, end - pos)
            done = pos - EDGE + seg
            if zero_bytes / done < 0.25:
                is_zero = True
            elif (zero_bytes + seg) / done > 0.35:
                is_zero = False
            else:
                is_zero = rng.random() < 0.30
            # Non-zero segments: random, or (COMPRESSIBLE > 0) text, picked
            # the same way so that ~COMPRESSIBLE of the payload is text.
            is_text = False
            if comp_target > 0 and not is_zero:
                if comp_bytes / done < comp_target - 0.05:
                    is_text = True
                elif (comp_bytes + seg) / done > comp_target + 0.05:
                    is_text = False
                else:
                    is_text = rng.random() < comp_target / 0.7
            left = seg
            while left:
                n = min(left, CHUNK)
                if is_zero:
                    f.write(zero[:n])
                elif is_text:
                    o = rng.randrange(0, len(pool) - n + 1)
                    f.write(pool[o:o + n])
                else:
                    f.write(os.urandom(n))
                left -= n
            if is_zero:
                zero_bytes += seg
            if is_text:
                comp_bytes += seg
            pos += seg
        f.write(bytes(EDGE))
    # GPT: an EFI partition and a root partition, both 1 MiB aligned, inside
    # the payload area.  sgdisk writes the primary GPT at the start and the
    # backup GPT at the end of the file.
    sectors = size // SECTOR
    first = EDGE // SECTOR
    efi_mib = max(1, min(100, size_mib // 20))
    efi_end = first + efi_mib * MIB // SECTOR - 1
    root_end = (size - EDGE) // SECTOR - 1
    subprocess.run(
        ["sgdisk", "--clear",
         "-n", f"1:{first}:{efi_end}", "-t", "1:ef00", "-c", "1:EFI",
         "-n", f"2:{efi_end + 1}:{root_end}", "-t", "2:8300", "-c", "2:root",
         tmp],
        check=True, stdout=subprocess.DEVNULL)
    assert os.path.getsize(tmp) == size, "sgdisk changed the image size"

    # checksums in one pass
    h256, h512, hmd5 = (hashlib.sha256(), hashlib.sha512(),
                        hashlib.md5())  # nosec - md5 is one of the benchmarked algos
    payload = hashlib.sha256()
    with open(tmp, "rb") as f:
        off = 0
        while True:
            buf = f.read(CHUNK)
            if not buf:
                break
            for h in (h256, h512, hmd5):
                h.update(buf)
            lo = max(off, EDGE)
            hi = min(off + len(buf), size - EDGE)
            if hi > lo:
                payload.update(memoryview(buf)[lo - off:hi - off])
            off += len(buf)
        f.seek(0)
        head = f.read(34 * SECTOR)
    sums = {
        "size": size,
        "sha256": h256.hexdigest(),
        "sha512": h512.hexdigest(),
        "md5": hmd5.hexdigest(),
        "payload_sha256": payload.hexdigest(),
        "payload_range": [EDGE, size - EDGE],
        "gpt": gpt_summary(head),
        "zero_fraction": round(zero_bytes / size, 3),
        "compressible": comp_target,
        "compressible_fraction": round(comp_bytes / size, 3),
        "sectors": sectors,
        "generator": GEN_VERSION,
    }
    os.replace(tmp, path)
    with open(path + ".sums.json", "w") as f:
        json.dump(sums, f, indent=1)
    print(f"image {path}: {size_mib} MiB, {sums['zero_fraction'] * 100:.1f} % "
          f"zero, {sums['compressible_fraction'] * 100:.1f} % text, "
          f"sha256 {sums['sha256']}", file=sys.stderr)


def gpt_summary(head):
    """Fields of the primary GPT that must survive a deploy unchanged."""
    hdr = head[SECTOR:2 * SECTOR]
    if hdr[:8] != b"EFI PART":
        return None
    n_entries = int.from_bytes(hdr[80:84], "little")
    entry_size = int.from_bytes(hdr[84:88], "little")
    entries = head[2 * SECTOR:2 * SECTOR + n_entries * entry_size]
    return {
        "disk_guid": hdr[56:72].hex(),
        "first_usable": int.from_bytes(hdr[40:48], "little"),
        "entries_sha256": hashlib.sha256(entries).hexdigest(),
        "entries_crc": hdr[88:92].hex(),
    }


def image_ok(path, size_mib, compressible="0"):
    """Exit 0 if IMAGE and its sums can be reused for SIZE_MIB."""
    try:
        with open(path + ".sums.json") as f:
            sums = json.load(f)
        st = os.stat(path)
        fresh = os.stat(path + ".sums.json").st_mtime >= st.st_mtime
        ok = (fresh and st.st_size == int(size_mib) * MIB
              and sums.get("size") == st.st_size
              and sums.get("generator") == GEN_VERSION
              and float(sums.get("compressible", 0)) == float(compressible))
    except (OSError, ValueError):
        ok = False
    return 0 if ok else 1


# ----------------------------------------------------------------- verify
def _hash_range(path, lo, hi):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(lo)
        left = hi - lo
        while left:
            buf = f.read(min(CHUNK, left))
            if not buf:
                break
            h.update(buf)
            left -= len(buf)
    return h.hexdigest(), left == 0


def check(sums, backing, loopdev):
    """Return (ok, word) for the current content of the target."""
    size = sums["size"]
    whole, complete = _hash_range(backing, 0, size)
    if complete and whole == sums["sha256"]:
        return True, "exact"
    lo, hi = sums["payload_range"]
    payload, complete = _hash_range(backing, lo, hi)
    if not complete or payload != sums["payload_sha256"]:
        return False, "MISMATCH(payload)"
    with open(backing, "rb") as f:
        head = f.read(34 * SECTOR)
    if gpt_summary(head) != sums["gpt"]:
        return False, "MISMATCH(gpt)"
    v = subprocess.run(["sgdisk", "-v", loopdev], capture_output=True,
                       text=True)
    if "No problems found" not in v.stdout:
        return False, "MISMATCH(sgdisk -v)"
    return True, "ok(gpt-moved)"


def verify(image, sums_path, backing, loopdev):
    with open(sums_path) as f:
        sums = json.load(f)
    ok, word = check(sums, backing, loopdev)
    if not ok:
        # Was the data only in the loop device's page cache?  Flush it and
        # look again, so the report can tell "never written" from
        # "written but not flushed when the command exited".
        subprocess.run(["blockdev", "--flushbufs", loopdev], check=False)
        ok2, word2 = check(sums, backing, loopdev)
        if ok2:
            word = "UNFLUSHED"
        else:
            word = word2
        ok = False
    print(word)
    return 0 if ok else 1


# ------------------------------------------------------------------- misc
def freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


# ------------------------------------------------------------------ table
def table(tsv, size_bytes, targets):
    """TSV columns: run target kind algo seconds rss_kib status."""
    size_bytes = int(size_bytes)
    rows = {}
    order = []
    with open(tsv) as f:
        for line in f:
            if not line.strip():
                continue
            run, target, kind, algo, secs, rss, status = \
                line.rstrip("\n").split("\t")
            key = (target, kind, algo)
            if key not in rows:
                rows[key] = {"secs": [], "rss": [], "status": []}
                order.append(key)
            r = rows[key]
            if secs != "-":
                r["secs"].append(float(secs))
            if rss != "-":
                r["rss"].append(int(rss))
            r["status"].append(status)

    def med(key):
        r = rows.get(key)
        if not r or not r["secs"] or any(s.startswith(("FAIL", "MISMATCH",
                                                       "UNFLUSHED"))
                                         for s in r["status"]):
            return None
        return statistics.median(r["secs"])

    def mbps(secs):
        return size_bytes / 1e6 / secs if secs else None

    def fmt(x, nd=0):
        return "—" if x is None else f"{x:.{nd}f}"

    labels = {
        "curl": "limit: curl -s -o /dev/null URL",
        "dgst": "limit: openssl dgst -{algo}",
        "dd": "limit: dd bs=4M oflag=direct",
        "rivet": "rivet deploy ({algo})",
        "ipa": "IPA 13.0.0 {ipa_call}, stream_raw_images ({algo})",
        "ipastream": "… of which IPA's own streaming time ({algo})",
    }
    out = []
    out.append("| target | measured | MB/s | s (median) | peak RSS MiB "
               "| rivet / IPA | ÷ slowest limit (which) | written |")
    out.append("|---|---|---:|---:|---:|---:|---|---|")

    def statuses(r):
        st = sorted(set(r["status"]))
        return ",".join(st)

    def emit(key):
        target, kind, algo = key
        r = rows[key]
        s = med(key)
        rss = max(r["rss"]) / 1024 if r["rss"] else None
        ratio_ipa = ""
        slow = ""
        if kind in ("rivet", "ipa", "ipastream"):
            lims = {"curl": med(("-", "curl", "-")),
                    f"dgst-{algo}": med(("-", "dgst", algo)),
                    "dd": med((target, "dd", "-"))}
            lims = {k: v for k, v in lims.items() if v is not None}
            if lims and s:
                name, worst = max(lims.items(), key=lambda kv: kv[1])
                # speed ratio = slowest-limit time / our time
                slow = f"{worst / s:.2f} ({name})"
            if kind == "rivet":
                ipa = med((target, "ipa", algo))
                if ipa and s:
                    ratio_ipa = f"{ipa / s:.2f}×"
        written = statuses(r) if kind in ("rivet", "ipa", "dd") else ""
        label = labels[kind].format(
            algo=algo,
            ipa_call={"stream": "_stream_raw_image_onto_device"}.get(
                os.environ.get("IPA_CALL"), "prepare_image"))
        out.append(f"| {target} | {label} | {fmt(mbps(s))} | {fmt(s, 3)} "
                   f"| {fmt(rss, 1)} | {ratio_ipa} | {slow} | {written} |")

    for key in order:
        if key[0] == "-":
            emit(key)
    algos = ["sha256", "sha512", "md5"]

    def rank(key):
        # dd first, then rivet/IPA pairs per algorithm
        _, kind, algo = key
        if kind == "dd":
            return 0
        return 1 + algos.index(algo) * 3 + ["rivet", "ipa",
                                            "ipastream"].index(kind)

    for t in targets:
        for key in sorted((k for k in order if k[0] == t), key=rank):
            emit(key)
    print("\n".join(out))


# ------------------------------------------------------ formats (formats.sh)
FMT_LABELS = {"raw": "raw", "qcow2": "qcow2", "qcow2c": "qcow2 -c",
              "rawgz": "raw.gz", "rawxz": "raw.xz", "rawzst": "raw.zst",
              "rawpzst": "raw.zst (pzstd)", "qcow2zst": "qcow2.zst"}
FMT_ORDER = ["raw", "qcow2", "qcow2c", "rawgz", "rawxz", "rawzst", "rawpzst",
             "qcow2zst"]
COMPRESSED = ["rawgz", "rawxz", "rawzst", "rawpzst", "qcow2zst"]
KIND_ORDER = ["rivet", "rivet_tmp", "ipa", "ipa_stream", "ipa_dl", "ipa_wr",
              "lim_curl", "lim_dgst", "lim_dec", "lim_dd", "lim_chain"]
# The stages of a compressed deploy, each measured alone (bench/formats.sh).
LIMIT_KINDS = ["lim_curl", "lim_dgst", "lim_dec", "lim_dd"]
KIND_LABELS = {
    "rivet": "rivet deploy (streaming)",
    "rivet_tmp": "rivet deploy --temp-file (download, then qemu-img convert)",
    "ipa": "IPA 13.0.0 prepare_image",
    "ipa_stream": "… of which IPA's streaming to the device",
    "ipa_dl": "… of which IPA's download to its temp file",
    "ipa_wr": "… of which IPA's _write_image (inspection, disk wipe, "
              "qemu-img convert, sync, partprobe)",
    "lim_curl": "limit alone: curl of the compressed file to /dev/null",
    "lim_dgst": "limit alone: openssl dgst -sha256 of the compressed file",
    "lim_dec": "limit alone: decompressor -dc to /dev/null "
               "(gzip; xz -T0; zstd; pzstd -p NPROC)",
    "lim_dd": "limit alone: dd of the image inside to the target (oflag=direct)",
    "lim_chain": "tools chained: curl \\| tee >(openssl dgst) \\| "
                 "decompressor \\| dd, one pipeline",
}
BAD = ("FAIL", "MISMATCH", "UNFLUSHED")
# ftable's TSV columns; older files have only the first 10 (no cpu, srv_cpu).
FT_COLS = ["run", "target", "fmt", "kind", "secs", "rss", "peak", "left",
           "status", "dl", "cpu", "srv_cpu", "box_cpu"]


def _bad_status(st):
    """A failed or wrong measurement (older files wrote a failed limit as
    "limit(rc N)" with N != 0)."""
    return st.startswith(BAD) or (st.startswith("limit(rc ")
                                  and st != "limit(rc 0)")


def _nproc():
    """The CPU floor's divisor: NPROC from bench/formats.sh, else this
    process's CPUs (what `nproc` prints)."""
    try:
        return int(os.environ["NPROC"])
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0))


def ftable(tsv, virtual_bytes, targets):
    """TSV columns: run target fmt kind seconds rss_kib tmp_peak_bytes
    tmp_left_bytes status download_bytes ('-' where not measured)."""
    virtual = int(virtual_bytes)
    rows = {}
    with open(tsv) as f:
        for line in f:
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            parts += ["-"] * (len(FT_COLS) - len(parts))
            c = dict(zip(FT_COLS, parts))
            (target, fmt, kind, secs, rss, peak, left, status, dl) = (
                c["target"], c["fmt"], c["kind"], c["secs"], c["rss"],
                c["peak"], c["left"], c["status"], c["dl"])
            r = rows.setdefault((target, fmt, kind), {
                "secs": [], "rss": [], "peak": [], "left": [], "status": [],
                "dl": None, "cpu": [], "srv": [], "box": []})
            if secs != "-":
                r["secs"].append(float(secs))
            if c["cpu"] != "-":
                r["cpu"].append(float(c["cpu"]))
            if c["srv_cpu"] != "-":
                r["srv"].append(float(c["srv_cpu"]))
            if c["box_cpu"] != "-":
                r["box"].append(float(c["box_cpu"]))
            if rss != "-":
                r["rss"].append(int(rss))
            if peak != "-":
                r["peak"].append(int(peak))
            if left != "-":
                r["left"].append(int(left))
            r["status"].append(status)
            if dl != "-":
                r["dl"] = int(dl)

    def med(key, col="secs"):
        r = rows.get(key)
        if (not r or not r[col]
                or any(_bad_status(s) for s in r["status"])):
            return None
        return statistics.median(r[col])

    def fmt_n(x, nd=0):
        return "—" if x is None else f"{x:.{nd}f}"

    out = ["| target | image (download MiB) | agent, path | s (median) "
           "| MB/s (virtual) | CPU s (user+sys) | nginx CPU s "
           "| peak RSS MiB | temp file (peak MiB in tmp) "
           "| left in tmp MiB | time ÷ rivet raw | speed-up over IPA "
           "| written |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    summary = []
    bounds = []
    for t in targets:
        raw_rivet = med((t, "raw", "rivet"))
        for fm in FMT_ORDER:
            ipa = med((t, fm, "ipa"))
            for kind in KIND_ORDER:
                key = (t, fm, kind)
                if key not in rows:
                    continue
                r = rows[key]
                s = med(key)
                phase = kind.startswith("ipa_") or kind.startswith("lim_")
                dl = r["dl"] or next((v["dl"] for k, v in rows.items()
                                      if k[:2] == (t, fm) and v["dl"]), None)
                image = (f"{FMT_LABELS[fm]} ({dl / MIB:.0f})" if dl
                         else FMT_LABELS[fm])
                rss = max(r["rss"]) / 1024 if r["rss"] else None
                if r["peak"]:
                    pk = max(r["peak"]) / MIB
                    tmpcol = (f"yes ({pk:.0f})" if pk >= 1
                              else f"no ({pk:.0f})")
                else:
                    tmpcol = ""
                leftcol = (fmt_n(max(r["left"]) / MIB) if r["left"] else "")
                ratio_raw = ""
                if not phase and s and raw_rivet:
                    ratio_raw = f"{s / raw_rivet:.2f}"
                speedup = ""
                if kind.startswith("rivet") and s and ipa:
                    speedup = f"{ipa / s:.2f}×"
                written = ("" if phase and kind != "lim_chain"
                           else ",".join(sorted(set(r["status"]))))
                # the download phase moves the file, not the virtual size
                speed = (None if kind == "ipa_dl" or not s
                         else virtual / 1e6 / s)
                out.append(
                    f"| {t} | {image} | {KIND_LABELS[kind]} | {fmt_n(s, 3)} "
                    f"| {fmt_n(speed)} | {fmt_n(med(key, 'cpu'), 2)} "
                    f"| {fmt_n(med(key, 'srv'), 2)} "
                    f"| {fmt_n(rss, 1)} | {tmpcol} | {leftcol} | {ratio_raw} "
                    f"| {speedup} | {written} |")
        for fm in ("qcow2", "qcow2c"):
            s = med((t, fm, "rivet"))
            if s and raw_rivet:
                q = s / raw_rivet
                goal = ""
                if fm == "qcow2":
                    goal = (" — target ≤ 1.1: "
                            + ("met" if q <= 1.1 else "**missed**"))
                summary.append(f"- {t}: rivet {FMT_LABELS[fm]} streaming "
                               f"time ÷ rivet raw time = {q:.2f}{goal}")
        for fm in FMT_ORDER:
            ipa = med((t, fm, "ipa"))
            for kind in ("rivet", "rivet_tmp"):
                s = med((t, fm, kind))
                if s and ipa:
                    summary.append(
                        f"- {t}: {FMT_LABELS[fm]}: {KIND_LABELS[kind]} is "
                        f"{ipa / s:.2f}× as fast as IPA "
                        f"({s:.3f} s vs {ipa:.3f} s)")
        bounds.extend(_bounds_rows(t, med))
    print("\n".join(out))
    if summary:
        print()
        print("\n".join(summary))
    if bounds:
        print()
        print(BOUNDS_HEAD)
        print("\n".join(bounds))


BOUNDS_HEAD = (
    "| target | image | rivet s | rivet CPU s | slowest stage alone s "
    "| ÷ rivet | tools chained s | ÷ rivet | CPU floor s "
    "| ÷ rivet | machine CPU floor s | ÷ rivet "
    "| goal: rivet ≥ 0.9× slowest stage |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _bounds_rows(t, med):
    """One row per compressed format on target T: rivet's time and CPU next
    to the slowest stage alone, the tools chained and the CPU floor (sum of
    the stages' CPU seconds / NPROC), each with its time ÷ rivet's time."""
    nproc = _nproc()
    rows = []
    for fm in COMPRESSED:
        s = med((t, fm, "rivet"))
        lims = [(k, med((t, fm, k))) for k in LIMIT_KINDS]
        missing = [k[4:] for k, v in lims if not v]
        lims = [(k, v) for k, v in lims if v]
        if not s or not lims:
            continue
        k, slowest = max(lims, key=lambda kv: kv[1])
        chain = med((t, fm, "lim_chain"))
        cpus = [med((t, fm, k), "cpu") for k in LIMIT_KINDS]
        floor = (sum(cpus) / nproc
                 if all(c is not None for c in cpus) else None)
        boxes = [med((t, fm, k), "box") for k in LIMIT_KINDS]
        mfloor = (sum(boxes) / nproc
                  if all(c is not None for c in boxes) else None)

        def cell(x, what=""):
            return ("— | —" if x is None
                    else f"{x:.3f}{what} | {x / s:.2f}×")

        rcpu = med((t, fm, "rivet"), "cpu")
        rbox = med((t, fm, "rivet"), "box")
        q = slowest / s
        rows.append(
            f"| {t} | {FMT_LABELS[fm]} | {s:.3f} "
            f"| {'—' if rcpu is None else f'{rcpu:.2f}'}"
            f"{'' if rbox is None else f' (machine {rbox:.2f})'} "
            f"| {cell(slowest, f' ({k[4:]})')} | {cell(chain)} "
            f"| {cell(floor, f' ({sum(cpus):.2f}/{nproc})' if floor else '')} "
            f"| {cell(mfloor, f' ({sum(boxes):.2f}/{nproc})' if mfloor else '')} "
            f"| {q:.2f}× — " + ("met" if q >= 0.9 else "**missed**")
            + (f" (stage(s) failed or not measured: {', '.join(missing)})"
               if missing else "") + " |")
    return rows


def _read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return []


def _find_heading(lines, heading):
    for i, line in enumerate(lines):
        if line.rstrip("\r\n").rstrip() == heading:
            return i
    return None


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def put_section(path, heading, new_file):
    """Replace PATH from the line HEADING to its end with NEW_FILE's text,
    or append that text when HEADING is absent; what precedes stays."""
    lines = _read_lines(path)
    i = _find_heading(lines, heading)
    head = "".join(lines if i is None else lines[:i]).rstrip("\n")
    with open(new_file) as f:
        new = f.read().strip("\n")
    _write_atomic(path, (head + "\n\n" if head else "") + new + "\n")


def put_head(path, heading, new_file):
    """Replace PATH up to the line HEADING with NEW_FILE's text, keeping
    HEADING and what follows it (all of PATH is replaced when absent)."""
    lines = _read_lines(path)
    i = _find_heading(lines, heading)
    tail = "" if i is None else "".join(lines[i:]).strip("\n")
    with open(new_file) as f:
        new = f.read().strip("\n")
    _write_atomic(path, new + "\n" + ("\n" + tail + "\n" if tail else ""))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "genimage":
        genimage(*args)
    elif cmd == "image-ok":
        return image_ok(*args)
    elif cmd == "verify":
        return verify(*args)
    elif cmd == "freeport":
        freeport()
    elif cmd == "table":
        table(args[0], args[1], args[2:])
    elif cmd == "ftable":
        ftable(args[0], args[1], args[2:])
    elif cmd == "put-section":
        put_section(*args)
    elif cmd == "put-head":
        put_head(*args)
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
