#!/usr/bin/env python3
"""Registers, spills and shared memory of every kernel, as ptxas reports them, without a GPU.

Compiles kernels/*.cu (with common.cuh in front, as the backend does) through NVRTC with
`-Xptxas=-v` and prints one line per kernel. NVRTC comes from ARTIST_CUDA_LIBS, or from the
PyPI wheel that scripts/ci_nvrtc.sh fetches:

    python3 scripts/kernel_resources.py                 # every file, sm_90
    python3 scripts/kernel_resources.py attention gemv --arch sm_80
    python3 scripts/kernel_resources.py elementwise --ptx   # the PTX instead (compute_90)
"""
import argparse
import ctypes
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def nvrtc_dir():
    d = os.environ.get("ARTIST_CUDA_LIBS")
    if d and (pathlib.Path(d) / "libnvrtc.so.13").exists():
        return d
    return subprocess.run(["bash", str(ROOT / "scripts/ci_nvrtc.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="kernel files by stem (default: all)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--ptx", action="store_true", help="print each file's PTX instead of the table")
    args = ap.parse_args()
    libdir = nvrtc_dir()
    # NVRTC opens its builtins library by name, so its folder must be on the search path.
    if libdir not in os.environ.get("LD_LIBRARY_PATH", ""):
        os.environ["LD_LIBRARY_PATH"] = libdir + ":" + os.environ.get("LD_LIBRARY_PATH", "")
        os.execv(sys.executable, [sys.executable] + sys.argv)
    lib = ctypes.CDLL(os.path.join(libdir, "libnvrtc.so.13"))
    common = (ROOT / "kernels/common.cuh").read_text()
    files = args.files or sorted(p.stem for p in (ROOT / "kernels").glob("*.cu"))
    if not args.ptx:
        print(f"{'kernel':<34} {'regs':>5} {'spill B':>8} {'smem B':>7}   ({args.arch})")
    for stem in files:
        src = common + "\n" + (ROOT / "kernels" / f"{stem}.cu").read_text()
        prog = ctypes.c_void_p()
        if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{stem}.cu".encode(), 0, None, None):
            sys.exit(f"{stem}: nvrtcCreateProgram failed")
        arch = args.arch.replace("sm_", "compute_") if args.ptx else args.arch
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"-Xptxas=-v"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace")
        if rc:
            sys.exit(f"{stem}: compilation failed\n{text}")
        if args.ptx:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
            ptx = ctypes.create_string_buffer(n.value)
            lib.nvrtcGetPTX(prog, ptx)
            print(ptx.value.decode(errors="replace"))
            continue
        name = spill = None
        for line in text.splitlines():
            # ptxas warnings, e.g. wgmma serialised ("Potential Performance Loss").
            if re.search(r"(?i)warning|performance loss", line):
                print(f"  {stem}: {line.strip()}")
            if m := re.search(r"Function properties for (\S+)", line):
                name = m.group(1)
            elif m := re.search(r"(\d+) bytes spill stores", line):
                spill = int(m.group(1))
            elif (m := re.search(r"Used (\d+) registers", line)) and name:
                smem = re.search(r"(\d+) bytes smem", line)
                print(f"{name:<34} {m.group(1):>5} {spill or 0:>8} {smem.group(1) if smem else 0:>7}")
                name = spill = None


if __name__ == "__main__":
    main()
