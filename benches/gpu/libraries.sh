# Sourced by run.sh and session.sh on the device machine: the libraries a `cuda` build of flora
# loads. cuBLAS, cuRAND, NVRTC and the CUDA runtime come from PyTorch's own NVIDIA packages;
# libcuda from the driver.
libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted({os.path.dirname(f) for p in nvidia.__path__ for f in glob.glob(p + "/**/lib*.so*", recursive=True)})))')
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
  [ -e "$d/libcuda.so.1" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
done
