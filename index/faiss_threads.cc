#include "index/faiss_threads.h"

#include <dlfcn.h>
#include <omp.h>

namespace kvtier {

FaissThreading ConfigureFaissThreads(int openmp_threads) {
  FaissThreading result;
  // Looked up at run time: which BLAS is loaded is the machine's choice (Debian alternatives),
  // not the build's, and only OpenBLAS has these entry points.
  using SetThreads = void (*)(int);
  using GetConfig = const char* (*)();
  auto set_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto get_config = reinterpret_cast<GetConfig>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (set_threads != nullptr) {
    set_threads(1);
    result.blas_single_threaded = true;
    result.blas = get_config != nullptr ? get_config() : "OpenBLAS";
  } else {
    result.blas_single_threaded = true;
    result.blas = "reference BLAS (no OpenBLAS symbols loaded)";
  }
  if (openmp_threads > 0) omp_set_num_threads(openmp_threads);
  result.openmp_threads = omp_get_max_threads();
  return result;
}

}  // namespace kvtier
