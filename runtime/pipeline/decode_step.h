// What the phases of one Decode share (decode.cc runs them in order): decided once, after the
// step is committed, from the batch, the options and whether the caller's stream is capturing
// a CUDA graph; read, never changed, by every phase.
#pragma once

#include <cstdint>

#include "kernels/backend/step_backend.h"
#include "kernels/base/dtype.h"
#include "runtime/pipeline/step_arrays.h"

namespace kvtier::internal {

struct DecodeStep {
  int layer = 0;
  int32_t batch = 0;  // sequences
  int32_t items = 0;  // batch * Hk
  // The layer's step arrays: written by the phases of this step, read by the next step of the
  // layer and by Inspect. Not owned.
  LayerArrays* arrays = nullptr;
  cudaStream_t stream = nullptr;  // the caller's

  // Inputs in backend memory (the caller's tensors, or their copies in the decode scratch).
  const void* q_in = nullptr;  // [batch, Hq, D]
  const void* k_in = nullptr;  // [batch, Hk, D]
  const void* v_in = nullptr;  // [batch, Hk, D]
  void* out_target = nullptr;  // [batch, Hq, D] in backend memory: out, or its staging
  bool out_staged = false;     // out is host memory on a device backend: copied at the end
  DType out_dtype = DType::kFP32;
  int64_t max_hot_tokens = 0;  // the longest hot set of the batch, after the append

  bool any_candidates = false;  // some item has pages outside its hot set: select and on
  bool any_writeback = false;   // some item's append completes a page: it is written back
  bool estimates = false;       // the index has an estimation zone
  bool capturing = false;       // the caller's stream is capturing a CUDA graph
  bool timed = false;           // record the timing events (collect_timings, not capturing)

  // The joins between the streams: the layer's events, or inside a capture their capture
  // twins (LayerArrays). Waits on earlier calls' work use the layer's own events directly.
  EventHandle appended = nullptr;
  EventHandle written_back = nullptr;
  EventHandle resolved = nullptr;
  EventHandle loaded = nullptr;
  EventHandle hot_attended = nullptr;
  EventHandle selected = nullptr;
  EventHandle scored = nullptr;  // the selection's scores are in (indexes that estimate the rest)
};

}  // namespace kvtier::internal
