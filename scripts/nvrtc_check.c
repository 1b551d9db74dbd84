/* Compiles a CUDA source with NVRTC, as flora's `cuda` build compiles its own kernels at run time
 * (stages/src/model/gpu_kernels.rs), for each virtual architecture given, and writes the PTX
 * beside the output prefix: OUT.compute_90.ptx, ... NVRTC's front end is not nvcc's (no host
 * headers, its own built-ins), so a kernel that nvcc compiles may still fail here.
 *
 *   nvrtc_check SOURCE OUT compute_90 [compute_80 ...]
 *
 * Exit status 1 with NVRTC's log on the first architecture that does not compile. The NVRTC
 * functions are declared here (their C interface is stable) so that only libnvrtc is needed. */
#include <stdio.h>
#include <stdlib.h>

typedef int nvrtcResult;
typedef struct _nvrtcProgram *nvrtcProgram;
nvrtcResult nvrtcCreateProgram(nvrtcProgram *, const char *, const char *, int,
                               const char *const *, const char *const *);
nvrtcResult nvrtcCompileProgram(nvrtcProgram, int, const char *const *);
nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram, size_t *);
nvrtcResult nvrtcGetProgramLog(nvrtcProgram, char *);
nvrtcResult nvrtcGetPTXSize(nvrtcProgram, size_t *);
nvrtcResult nvrtcGetPTX(nvrtcProgram, char *);
nvrtcResult nvrtcDestroyProgram(nvrtcProgram *);

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)n + 1);
  if (text && fread(text, 1, (size_t)n, f) != (size_t)n) {
    free(text);
    text = NULL;
  }
  if (text) text[n] = 0;
  fclose(f);
  return text;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s SOURCE OUT compute_XY [compute_XY ...]\n", argv[0]);
    return 2;
  }
  char *source = read_file(argv[1]);
  if (!source) {
    fprintf(stderr, "nvrtc_check: cannot read %s\n", argv[1]);
    return 2;
  }
  for (int a = 3; a < argc; a++) {
    char option[64];
    snprintf(option, sizeof option, "--gpu-architecture=%s", argv[a]);
    const char *options[] = {option};
    nvrtcProgram prog;
    if (nvrtcCreateProgram(&prog, source, argv[1], 0, NULL, NULL) != 0) {
      fprintf(stderr, "nvrtc_check: NVRTC could not create a program\n");
      return 1;
    }
    nvrtcResult compiled = nvrtcCompileProgram(prog, 1, options);
    size_t size = 0;
    nvrtcGetProgramLogSize(prog, &size);
    char *log = malloc(size + 1);
    log[0] = 0;
    if (size) nvrtcGetProgramLog(prog, log);
    if (compiled != 0) {
      fprintf(stderr, "nvrtc_check: %s does not compile for %s (NVRTC error %d):\n%s\n",
              argv[1], argv[a], compiled, log);
      return 1;
    }
    if (log[0]) fprintf(stderr, "%s (%s):\n%s\n", argv[1], argv[a], log);
    free(log);
    nvrtcGetPTXSize(prog, &size);
    char *ptx = malloc(size);
    nvrtcGetPTX(prog, ptx);
    char path[4096];
    snprintf(path, sizeof path, "%s.%s.ptx", argv[2], argv[a]);
    FILE *out = fopen(path, "wb");
    if (!out || fwrite(ptx, 1, size - 1, out) != size - 1) {
      fprintf(stderr, "nvrtc_check: cannot write %s\n", path);
      return 2;
    }
    fclose(out);
    free(ptx);
    nvrtcDestroyProgram(&prog);
  }
  free(source);
  return 0;
}
