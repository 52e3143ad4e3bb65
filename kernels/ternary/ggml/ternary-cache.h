// The repack cache of our weight buffer (ternary-cache.cpp): the repacked weights of a memory-mapped GGUF
// kept in a file beside it, so that the next load maps them (page-cache pages, shared between processes)
// instead of repacking into fresh anonymous memory. Linux only; elsewhere every call says "not cached".
#pragma once

#include "ggml.h"

#include <cstddef>
#include <cstdint>
#include <memory>

namespace bitnet_ggml {

struct repack_cache_state;

class repack_cache {
  public:
    // [base, base + size): the buffer's memory, 2 MiB-aligned, from mmap; tensors in it start on pages
    repack_cache(uint8_t * base, size_t size);
    ~repack_cache();  // waits for a cache file being finished
    repack_cache(const repack_cache &)             = delete;
    repack_cache & operator=(const repack_cache &) = delete;

    // init_tensor: t is in the buffer; ours = it will be repacked (set_tensor counts those to know when
    // loading is over), else its bytes are copied
    void announce(const ggml_tensor * t, bool ours);
    // set_tensor, before repacking t from data (its bytes in the mapped GGUF): true if t's range now maps
    // the cache file's copy (checked against data), false if t must be repacked into its range (private
    // memory; when a cache file is being written, repacked() copies the result into it)
    bool map(const ggml_tensor * t, const void * data);
    // after repacking t (its range is private memory): ok = it holds our layout now
    void repacked(const ggml_tensor * t, bool ok);
    // set_tensor, before copying ggml's bytes of a tensor that is not repacked (t's range is private memory)
    void before_copy(const ggml_tensor * t, const void * data);
    // the whole buffer back to private zeroed memory (buffer clear)
    void drop_all();

  private:
    std::unique_ptr<repack_cache_state> s_;
};

}  // namespace bitnet_ggml
