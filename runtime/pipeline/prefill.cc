// KvCache::Prefill (contract in runtime/kv_cache.h): Prefill(seq, layer, k, v), in pieces of
// at most max_prefill_chunk_tokens:
//   caller stream:  wait(previous write-back from this staging buffer) -> [copy the partial
//                   last page from the hot set into staging] -> [indexes that order segments:
//                   the order of each KV head's segment, the piece's rows gathered in it and
//                   the stored positions] -> pack the tokens into staged pages -> summaries ->
//                   copy hot pages (sinks, the last ring pages) into the hot set -> (record
//                   packed)
//   copy stream:    wait(packed) -> write-back of the completed pages to the host store
//                   (TransferEngine::WriteBack) -> (record the layer's written_back).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// ---- Prefill ------------------------------------------------------------------------------

absl::Status KvCacheImpl::Prefill(SeqId seq, int layer, const ConstTensor& k, const ConstTensor& v,
                                  const ConstTensor& q, cudaStream_t stream) {
  absl::MutexLock lock(&mu_);
  const ModelShape& shape = options_.shape;
  KVTIER_RETURN_IF_ERROR(CheckLayer(layer));
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("Prefill: sequence ", seq, " is not stored"));
  }
  KVTIER_RETURN_IF_ERROR(
      CheckTensor("Prefill k", k, {{-1, shape.num_kv_heads, shape.head_dim}, shape.dtype}));
  const int64_t n = k.shape[0];
  if (n < 1) return absl::InvalidArgumentError("Prefill k: needs at least one token");
  KVTIER_RETURN_IF_ERROR(
      CheckTensor("Prefill v", v, {{n, shape.num_kv_heads, shape.head_dim}, shape.dtype}));
  if (q.data != nullptr) {
    KVTIER_RETURN_IF_ERROR(
        CheckTensor("Prefill q", q, {{n, shape.num_query_heads, shape.head_dim}, shape.dtype}));
    KVTIER_RETURN_IF_ERROR(CheckSpace("Prefill q", q.space));
  }
  KVTIER_RETURN_IF_ERROR(CheckSpace("Prefill k", k.space));
  KVTIER_RETURN_IF_ERROR(CheckSpace("Prefill v", v.space));
  if (k.space != v.space) {
    return absl::InvalidArgumentError("Prefill: k and v must be in the same memory space");
  }
  KVTIER_ASSIGN_OR_RETURN(const bool capturing, backend_->IsCapturing(stream));
  if (capturing) {
    return absl::FailedPreconditionError(
        "Prefill: the stream is capturing a CUDA graph; prefill cannot be captured");
  }
  Sequence& sequence = it->second;
  const int64_t before = sequence.tokens[layer];
  if (before + n > options_.max_sequence_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Prefill: sequence ", seq, " layer ", layer, " holds ", before, " tokens; ", n,
                     " more would exceed max_sequence_tokens = ", options_.max_sequence_tokens));
  }
  const int32_t p = plan_.page_size;
  HostPageTable::Growth growth;
  growth.row_begin = Row(sequence.slot, layer, 0);
  growth.num_rows = shape.num_kv_heads;
  growth.pages_before = static_cast<int32_t>(CeilDiv(before, p));
  growth.pages_after = static_cast<int32_t>(CeilDiv(before + n, p));
  KVTIER_RETURN_IF_ERROR(page_table_->Grow({&growth, 1}));

  // Committed: from here on only device failures can stop the call.
  const int64_t row_bytes =
      int64_t{shape.num_kv_heads} * shape.head_dim * static_cast<int64_t>(DTypeSize(shape.dtype));
  const bool inputs_on_backend = backend_->on_device() == (k.space == MemorySpace::kDevice);
  // Calls may come on different streams: each starts after the previous one's work, as the
  // calls share scratch and staging buffers.
  if (any_call_) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, last_call_done_));
  int64_t done = 0;
  while (done < n) {
    const int64_t position = before + done;
    const int64_t piece =
        std::min<int64_t>(n - done, options_.max_prefill_chunk_tokens - position % p);
    KVTIER_RETURN_IF_ERROR(PrefillPiece(sequence, layer,
                                        static_cast<const std::byte*>(k.data) + done * row_bytes,
                                        static_cast<const std::byte*>(v.data) + done * row_bytes,
                                        inputs_on_backend, position, piece, before + n, stream));
    done += piece;
  }
  sequence.tokens[layer] = before + n;
  LayerStats& stats = layers_[layer].stats;
  stats.prefill_tokens += n;
  stats.prefill_bytes_stored +=
      ((before + n) / p - before / p) * shape.num_kv_heads * 2 * plan_.page_bytes;
  KVTIER_RETURN_IF_ERROR(backend_->Record(last_call_done_, stream));
  any_call_ = true;
  return absl::OkStatus();
}

absl::Status KvCacheImpl::PrefillPiece(const Sequence& sequence, int layer, const std::byte* k,
                                       const std::byte* v, bool inputs_on_backend, int64_t position,
                                       int64_t tokens, int64_t call_end, cudaStream_t stream) {
  const ModelShape& shape = options_.shape;
  const int hk = shape.num_kv_heads;
  const int32_t p = plan_.page_size;
  const int32_t s = plan_.sink_pages;
  const int32_t r = plan_.ring_pages;
  const int64_t pb = plan_.page_bytes;
  const int64_t hot_pages = int64_t{s} + r;
  PrefillBuffer& buffer = prefill_[next_prefill_buffer_];
  next_prefill_buffer_ ^= 1;
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, buffer.written_back));

  // Inputs into backend memory.
  const int64_t row_bytes =
      int64_t{hk} * shape.head_dim * static_cast<int64_t>(DTypeSize(shape.dtype));
  if (!inputs_on_backend) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(buffer.k_rows, k, tokens * row_bytes, stream));
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(buffer.v_rows, v, tokens * row_bytes, stream));
    k = buffer.k_rows;
    v = buffer.v_rows;
  }

  const int64_t first_page = position / p;
  const int64_t last_page = (position + tokens - 1) / p;
  const int32_t np = static_cast<int32_t>(last_page - first_page + 1);
  const int32_t entries = np * hk;
  const int64_t pages_after_piece = (position + tokens + p - 1) / p;
  const int64_t ring_from = std::max<int64_t>(s, pages_after_piece - r);

  // The segment an index that orders segments lays out its own way: the piece's full pages
  // that are cold once this call's tokens are in ([S, pages - W) at the next decode), each KV
  // head's tokens of those pages permuted by the index.
  const int64_t call_pages_next = call_end / p + 1;
  const int64_t cold_end = std::max<int64_t>(s, call_pages_next - plan_.window_pages);
  const int64_t seg_first = std::max<int64_t>(s, (position + p - 1) / p);
  const int64_t seg_end = std::min<int64_t>((position + tokens) / p, cold_end);
  const bool ordered = index_->orders_segments() && seg_end > seg_first;
  const int32_t seg_tokens = ordered ? static_cast<int32_t>((seg_end - seg_first) * p) : 0;
  const int32_t seg_begin = ordered ? static_cast<int32_t>(seg_first * p - position) : 0;

  // Pointer arrays, built on the host and uploaded in one copy; layout (entries e * hk + h):
  // pack k, pack v, write-back k src, v src, k dst, v dst, hot copy src, hot copy dst
  // (2 * entries each: K then V), summary destinations (one run a summary array), partial
  // copy src, dst (2 * hk each), segment keys, orders, positions (hk each). Then the int32
  // arrays: summary tokens (entries), segment tokens (hk).
  const int arrays = summary_layout_.arrays;
  std::vector<const void*> ptr(static_cast<size_t>(PrefillPointerCount(plan_.prefill)), nullptr);
  const void** pack_k = ptr.data();
  const void** pack_v = pack_k + entries;
  const void** wb_k_src = pack_v + entries;
  const void** wb_v_src = wb_k_src + entries;
  const void** wb_k_dst = wb_v_src + entries;
  const void** wb_v_dst = wb_k_dst + entries;
  const void** hot_src = wb_v_dst + entries;
  const void** hot_dst = hot_src + 2 * entries;
  const void** sum_dst[kMaxSummaryArrays] = {};
  for (int i = 0; i < arrays; ++i) sum_dst[i] = hot_dst + 2 * entries + int64_t{i} * entries;
  const void** part_src = hot_dst + 2 * entries + int64_t{arrays} * entries;
  const void** part_dst = part_src + 2 * hk;
  const void** seg_keys = part_dst + 2 * hk;
  const void** seg_order = seg_keys + hk;
  const void** seg_positions = seg_order + hk;
  std::vector<int32_t> ints(static_cast<size_t>(PrefillInt32Count(plan_.prefill)), 0);
  int32_t* sum_tokens = ints.data();
  int32_t* seg_count = sum_tokens + entries;
  int32_t writebacks = 0;
  int32_t hot_copies = 0;
  std::byte* stage_k = buffer.pages;
  std::byte* stage_v = buffer.pages + int64_t{plan_.prefill_pages} * hk * pb;
  auto hot_index = [&](int64_t page) { return page < s ? page : s + (page - s) % r; };
  for (int32_t e = 0; e < np; ++e) {
    const int64_t page = first_page + e;
    const int64_t filled = std::min<int64_t>(p, position + tokens - page * p);
    for (int h = 0; h < hk; ++h) {
      const int i = e * hk + h;
      const int64_t row = Row(sequence.slot, layer, h);
      std::byte* sk = stage_k + int64_t{i} * pb;
      std::byte* sv = stage_v + int64_t{i} * pb;
      pack_k[i] = sk;
      pack_v[i] = sv;
      sum_tokens[i] = static_cast<int32_t>(filled);
      std::byte* region = summaries_ + row * plan_.max_pages * plan_.summary_page_bytes;
      for (int a = 0; a < arrays; ++a) {
        sum_dst[a][i] = region + summary_layout_.offset[a] + page * summary_layout_.stride[a];
      }
      if (filled == p) {
        wb_k_src[writebacks] = sk;
        wb_v_src[writebacks] = sv;
        wb_k_dst[writebacks] = page_table_->KPageAddress(row, static_cast<int32_t>(page));
        wb_v_dst[writebacks] = page_table_->VPageAddress(row, static_cast<int32_t>(page));
        ++writebacks;
      }
      if (page < s || page >= ring_from) {
        const int64_t hot = row * hot_pages + hot_index(page);
        hot_src[hot_copies] = sk;
        hot_dst[hot_copies] = hot_k_ + hot * pb;
        hot_src[hot_copies + 1] = sv;
        hot_dst[hot_copies + 1] = hot_v_ + hot * pb;
        hot_copies += 2;
      }
    }
  }
  const bool partial_first = position % p != 0;
  if (partial_first) {
    for (int h = 0; h < hk; ++h) {
      const int64_t hot = Row(sequence.slot, layer, h) * hot_pages + hot_index(first_page);
      part_src[2 * h] = hot_k_ + hot * pb;
      part_dst[2 * h] = stage_k + int64_t{h} * pb;
      part_src[2 * h + 1] = hot_v_ + hot * pb;
      part_dst[2 * h + 1] = stage_v + int64_t{h} * pb;
    }
  }
  if (ordered) {
    const int64_t key_row = int64_t{shape.head_dim} * static_cast<int64_t>(DTypeSize(shape.dtype));
    const int pos_array = index_->position_array();
    for (int h = 0; h < hk; ++h) {
      seg_keys[h] = k + (int64_t{seg_begin} * hk + h) * key_row;
      seg_order[h] = buffer.order + int64_t{h} * options_.max_prefill_chunk_tokens;
      seg_count[h] = seg_tokens;
      if (pos_array >= 0) {
        const int64_t row = Row(sequence.slot, layer, h);
        seg_positions[h] = reinterpret_cast<int32_t*>(
            summaries_ + row * plan_.max_pages * plan_.summary_page_bytes +
            summary_layout_.offset[pos_array] + seg_first * summary_layout_.stride[pos_array]);
      }
    }
  }
  const int64_t ptr_bytes = static_cast<int64_t>(ptr.size() * sizeof(void*));
  auto* dev_ptr = reinterpret_cast<const void**>(buffer.pointers);
  auto* dev_tokens = reinterpret_cast<int32_t*>(buffer.pointers + ptr_bytes);
  KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(dev_ptr, ptr.data(), ptr_bytes, stream));
  KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(dev_tokens, ints.data(),
                                                 static_cast<int64_t>(ints.size()) * 4, stream));
  auto dev = [&](const void** host_array) { return dev_ptr + (host_array - ptr.data()); };
  // The same array for fields that write through the pointers.
  auto dev_mut = [&](const void** host_array) {
    return reinterpret_cast<void* const*>(const_cast<void**>(dev(host_array)));
  };

  if (partial_first) {
    PageCopyParams copy;
    copy.src = dev(part_src);
    copy.dst = dev_mut(part_dst);
    copy.num_pages = 2 * hk;
    copy.page_bytes = pb;
    KVTIER_RETURN_IF_ERROR(backend_->PageCopy(copy, stream));
  }
  if (ordered) {
    // The index's order of each KV head's segment, then the piece's rows in that order.
    SegmentBatch segments;
    segments.num_segments = hk;
    segments.max_tokens = options_.max_prefill_chunk_tokens;
    segments.keys = dev(seg_keys);
    segments.key_stride = int64_t{hk} * shape.head_dim;
    segments.num_tokens = dev_tokens + entries;
    segments.order = reinterpret_cast<int32_t* const*>(dev_mut(seg_order));
    segments.workspace = buffer.segment_workspace;
    segments.workspace_bytes = buffer.segment_workspace_bytes;
    KVTIER_RETURN_IF_ERROR(index_->OrderSegments(*backend_, segments, stream));
    RowGatherParams gather;
    gather.num_tokens = static_cast<int32_t>(tokens);
    gather.num_heads = hk;
    gather.row_bytes =
        static_cast<int32_t>(shape.head_dim * static_cast<int64_t>(DTypeSize(shape.dtype)));
    gather.segment_begin = seg_begin;
    gather.segment_tokens = seg_tokens;
    gather.src[0] = k;
    gather.src[1] = v;
    gather.dst[0] = buffer.ordered_k_rows;
    gather.dst[1] = buffer.ordered_v_rows;
    gather.order = reinterpret_cast<const int32_t* const*>(dev(seg_order));
    if (index_->position_array() >= 0) {
      gather.positions = reinterpret_cast<int32_t* const*>(dev_mut(seg_positions));
    }
    gather.position_base = seg_first * p;
    KVTIER_RETURN_IF_ERROR(backend_->RowGather(gather, stream));
    k = buffer.ordered_k_rows;
    v = buffer.ordered_v_rows;
  }
  TokenPackParams pack;
  pack.dtype = shape.dtype;
  pack.num_kv_heads = hk;
  pack.head_dim = shape.head_dim;
  pack.page_size = p;
  pack.num_tokens = static_cast<int32_t>(tokens);
  pack.first_position = position;
  pack.k = k;
  pack.v = v;
  pack.k_pages = dev_mut(pack_k);
  pack.v_pages = dev_mut(pack_v);
  KVTIER_RETURN_IF_ERROR(backend_->TokenPack(pack, stream));

  PageBatch summary;
  summary.num_pages = entries;
  summary.k_pages = dev(pack_k);
  summary.v_pages = dev(pack_v);
  summary.tokens = dev_tokens;
  for (int a = 0; a < arrays; ++a) summary.dst[a] = dev_mut(sum_dst[a]);
  summary.item_stride = hk;  // entry e * hk + h: page e of KV head h
  KVTIER_RETURN_IF_ERROR(index_->Summarize(*backend_, summary, stream));

  if (hot_copies > 0) {
    PageCopyParams copy;
    copy.src = dev(hot_src);
    copy.dst = dev_mut(hot_dst);
    copy.num_pages = hot_copies;
    copy.page_bytes = pb;
    KVTIER_RETURN_IF_ERROR(backend_->PageCopy(copy, stream));
  }
  KVTIER_RETURN_IF_ERROR(backend_->Record(buffer.packed, stream));
  if (writebacks > 0) {
    TransferEngine::WriteBackBatch pages;
    pages.num_pages = writebacks;
    pages.k_src = dev(wb_k_src);
    pages.v_src = dev(wb_v_src);
    pages.k_dst = dev_mut(wb_k_dst);
    pages.v_dst = dev_mut(wb_v_dst);
    KVTIER_RETURN_IF_ERROR(transfer_engine_->WriteBack(pages, buffer.packed, buffer.written_back));
    // Decode loads of this layer must see these pages.
    KVTIER_RETURN_IF_ERROR(backend_->Record(layers_[layer].written_back, backend_->copy_stream()));
  }
  return absl::OkStatus();
}

}  // namespace kvtier::internal
