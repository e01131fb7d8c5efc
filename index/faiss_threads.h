// Thread setup that must precede any FAISS call. Debian's FAISS is a static library built
// with OpenMP and linked against the system BLAS; with OpenBLAS's pthread build each OpenMP
// thread starts its own BLAS threads and a flat search runs ~20x slower (../shared/GPU.md).
// Parallelism belongs to OpenMP; BLAS must run single-threaded inside it.
#pragma once

#include <string>

namespace kvtier {

struct FaissThreading {
  int openmp_threads = 0;  // threads FAISS's OpenMP loops use
  // The BLAS was told to use one thread (OpenBLAS found and set), or it never threads
  // (no OpenBLAS symbols: a reference BLAS).
  bool blas_single_threaded = false;
  std::string blas;  // what was found, for logs: OpenBLAS's config string or "reference BLAS"
};

// Sets OpenBLAS (when it is the loaded BLAS) to one thread and OpenMP to `openmp_threads`
// (0 keeps OpenMP's default). Idempotent and safe to call from several threads.
FaissThreading ConfigureFaissThreads(int openmp_threads = 0);

}  // namespace kvtier
