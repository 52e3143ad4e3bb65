// The repack cache (see ternary-cache.h).
//
// Why: repacking at load writes every byte of our layout into fresh anonymous pages, which the kernel
// must zero first (on a VM the host too), and that fault + zero + copy made loads 1.4-2.8x stock's, which
// reads its weights straight out of the page cache. A second load of the same GGUF maps the copy kept in
// "<gguf>.<isa>.bitnet-repack": page-cache pages like stock's, shared between processes, nothing to zero or
// repack, and never touched twice by a crash: the file is built unnamed (O_TMPFILE), synced, then named.
//
// The file: a header, at 2 MiB an image of the buffer (each cached tensor at its offset in the buffer,
// which is why our tensors start on page boundaries), then a table of the cached tensors. It is used only
// if its header names the same source file (inode, size, mtime), ISA and buffer size, and per tensor only
// if the table entry has the tensor's name, offsets, shape, type and layout and the first and last 16-row
// groups equal a fresh repack from the GGUF (which also catches a layout change in a newer build). A file
// that fails those checks is deleted and rebuilt on a later load. BITNET_REPACK_CACHE=0: no cache.

#include "ternary-cache.h"

#include "ternary-buft.h"

#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#if defined(__linux__)
#    include <cerrno>
#    include <fcntl.h>
#    include <sys/mman.h>
#    include <sys/stat.h>
#    include <unistd.h>
#endif

namespace bitnet_ggml {

#if defined(__linux__)

namespace {

constexpr char     k_magic[8] = { 'B', 'N', 'R', 'E', 'P', 'A', 'K', '\0' };
constexpr uint32_t k_version  = 1;
constexpr size_t   k_image_off = (size_t) 2 << 20;  // the buffer's image: huge-page aligned in the file

struct file_header {
    char     magic[8];
    uint32_t version;
    uint32_t n_entries;
    uint64_t src_ino;
    uint64_t src_size;
    int64_t  src_mtime_ns;
    uint64_t image_size;  // the buffer's bytes, from file offset k_image_off
    uint64_t table_off;
    char     isa[32];
};

struct file_entry {
    char     name[GGML_MAX_NAME];
    uint64_t buf_off;  // in the buffer (in the file: k_image_off + buf_off)
    uint64_t size;     // bytes of our layout
    uint64_t src_off;  // of the tensor's TQ bytes in the GGUF
    int64_t  ne0, ne1;
    int32_t  type, layout;
};

// one line of /proc/self/maps backed by a file
struct file_map {
    uintptr_t   lo = 0, hi = 0;
    uint64_t    off = 0, ino = 0;
    std::string path;
};

std::vector<file_map> read_maps() {
    std::vector<file_map> out;
    FILE *                f = std::fopen("/proc/self/maps", "re");
    if (!f) {
        return out;
    }
    char line[4352];
    while (std::fgets(line, sizeof line, f)) {
        unsigned long lo, hi, off, ino;
        char          perms[8], dev[32];
        int           n = 0;
        if (std::sscanf(line, "%lx-%lx %7s %lx %31s %lu %n", &lo, &hi, perms, &off, dev, &ino, &n) < 6 || ino == 0 ||
            line[n] != '/') {
            continue;
        }
        std::string path(line + n);
        while (!path.empty() && (path.back() == '\n' || path.back() == ' ')) {
            path.pop_back();
        }
        out.push_back({ lo, hi, off, ino, path });
    }
    std::fclose(f);
    return out;
}

bool pwrite_all(int fd, const void * data, size_t n, size_t off) {
    const auto * p = static_cast<const uint8_t *>(data);
    while (n > 0) {
        const ssize_t w = pwrite(fd, p, n, (off_t) off);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) {
                continue;
            }
            return false;
        }
        p += w, n -= (size_t) w, off += (size_t) w;
    }
    return true;
}

bool cache_enabled() {
    const char * env = std::getenv(BITNET_ENV_REPACK_CACHE);
    return !(env && std::strcmp(env, "0") == 0);
}

void report(const std::string & what) {
    if (std::getenv(BITNET_ENV_VARIANT_REPORT)) {
        std::fprintf(stderr, BITNET_REPORT_REPACK_CACHE, what.c_str());
        std::fflush(stderr);
    }
}

// The first and last 16-row groups of t as repacked now from src equal those at `have` (t's layout).
bool same_edges(const ggml_tensor * t, const void * src, const uint8_t * have) {
    const bitnet_layout layout = layout_of(t);
    const int64_t       rows = t->ne[1], k = t->ne[0], nb = k / BITNET_QK;
    const int64_t       groups = (rows + BITNET_GROUP_ROWS - 1) / BITNET_GROUP_ROWS;
    const size_t        total  = repacked_size(t);
    const size_t        scales = BITNET_GROUP_ROWS * sizeof(uint16_t);
    const size_t        tb     = total / (size_t) (groups * nb) - scales;
    // only two groups' bytes of this get written (and faulted in)
    void * scratch = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (scratch == MAP_FAILED) {
        return false;
    }
    bool same = true;
    for (int64_t g : { (int64_t) 0, groups - 1 }) {
        if (bitnet_repack_groups(layout, src_type(t->type), src, rows, k, scratch, g, g + 1) != BITNET_OK) {
            same = false;
            break;
        }
        const size_t code_off = (size_t) (g * nb) * tb, scale_off = (size_t) (groups * nb) * tb + (size_t) (g * nb) * scales;
        const auto * s = static_cast<const uint8_t *>(scratch);
        if (std::memcmp(s + code_off, have + code_off, (size_t) nb * tb) != 0 ||
            std::memcmp(s + scale_off, have + scale_off, (size_t) nb * scales) != 0) {
            same = false;
            break;
        }
    }
    munmap(scratch, total);
    return same;
}

}  // namespace

struct repack_cache_state {
    enum class mode { unknown, read, write, off };

    uint8_t *   base;
    size_t      size;
    size_t      page;
    mode        m  = mode::unknown;
    int         fd = -1;
    std::string path;  // the cache file
    file_map    src;   // the GGUF's mapping
    file_header hdr{};
    std::vector<file_entry>                             entries;  // read: the file's table; write: written
    std::unordered_map<std::string, size_t>             index;    // read: name -> entry
    std::unordered_map<const ggml_tensor *, file_entry> pending;  // write: entries of tensors being repacked
    std::unordered_set<const ggml_tensor *>             expected, others, done;
    size_t                                              n_mapped = 0;
    std::thread                                         finisher;
    std::mutex                                          mu;

    size_t buf_off(const ggml_tensor * t) const { return (size_t) ((const uint8_t *) t->data - base); }

    void off(const std::string & why) {
        if (fd >= 0) {
            close(fd);
            fd = -1;
        }
        m = mode::off;
        report("off (" + why + ")");
    }

    // t's pages back to private zeroed memory (from the cache file's mapping)
    void make_private(const ggml_tensor * t) {
        const size_t span = (alloc_size(t) + page - 1) / page * page;
        void *       p    = mmap(t->data, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        GGML_ASSERT(p != MAP_FAILED && "bitnet: could not remap a weight's memory");
    }

    // At the first tensor set: the cache file to read, or one to write, or none. `data` is in the GGUF.
    void start(const void * data) {
        if (!cache_enabled()) {
            off(std::string(BITNET_ENV_REPACK_CACHE) + "=0");
            return;
        }
        for (const file_map & fm : read_maps()) {
            if ((uintptr_t) data >= fm.lo && (uintptr_t) data < fm.hi) {
                src = fm;
            }
        }
        struct stat st;
        if (src.path.empty() || stat(src.path.c_str(), &st) != 0 || (uint64_t) st.st_ino != src.ino) {
            off("the model file is not memory-mapped");
            return;
        }
        std::memcpy(hdr.magic, k_magic, sizeof k_magic);
        hdr.version      = k_version;
        hdr.src_ino      = (uint64_t) st.st_ino;
        hdr.src_size     = (uint64_t) st.st_size;
        hdr.src_mtime_ns = (int64_t) st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        hdr.image_size   = size;
        hdr.table_off    = k_image_off + size;
        std::snprintf(hdr.isa, sizeof hdr.isa, "%s", bitnet_isa());
        path = src.path + "." + hdr.isa + ".bitnet-repack";
        if (open_existing() && map_image()) {
            m = mode::read;
            return;
        }
        const size_t      slash = src.path.rfind('/');
        const std::string dir   = slash == 0 ? "/" : src.path.substr(0, slash);
        fd = open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
        if (fd < 0) {
            off("cannot write in " + dir + ": " + std::strerror(errno));
            return;
        }
        m = mode::write;
    }

    bool open_existing() {
        fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            return false;
        }
        file_header h{};
        struct stat st;
        bool ok = pread(fd, &h, sizeof h, 0) == (ssize_t) sizeof h && fstat(fd, &st) == 0 &&
                  std::memcmp(h.magic, hdr.magic, sizeof h.magic) == 0 && h.version == hdr.version &&
                  h.src_ino == hdr.src_ino && h.src_size == hdr.src_size && h.src_mtime_ns == hdr.src_mtime_ns &&
                  h.image_size == hdr.image_size && h.table_off == hdr.table_off &&
                  std::strncmp(h.isa, hdr.isa, sizeof h.isa) == 0 &&
                  (uint64_t) st.st_size >= h.table_off + (uint64_t) h.n_entries * sizeof(file_entry);
        if (ok) {
            entries.resize(h.n_entries);
            const ssize_t want = (ssize_t) (entries.size() * sizeof(file_entry));
            ok = pread(fd, entries.data(), (size_t) want, (off_t) h.table_off) == want;
        }
        if (!ok) {  // another source, build, ISA or model layout: this load writes a new one
            close(fd);
            fd = -1;
            entries.clear();
            return false;
        }
        for (size_t i = 0; i < entries.size(); i++) {
            entries[i].name[GGML_MAX_NAME - 1] = '\0';
            index.emplace(entries[i].name, i);
        }
        return true;
    }

    // The whole image over the buffer as one mapping (base and image are 2 MiB-aligned alike, so the page
    // cache's huge folios map as huge pages: 4 KiB pages cost ~9% of decode in TLB misses); each tensor is
    // read in as it is set (the loader drops the GGUF's pages of it meanwhile: peak RSS stays stock's);
    // the tensors that are not cached get private memory back then.
    bool map_image() {
        void * p = mmap(base, size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, (off_t) k_image_off);
        if (p == MAP_FAILED) {
            p = mmap(base, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            GGML_ASSERT(p != MAP_FAILED && "bitnet: could not remap the weight buffer");
            close(fd);
            fd = -1;
            return false;
        }
#    if defined(MADV_HUGEPAGE)
        (void) madvise(base, size, MADV_HUGEPAGE);  // read from disk into huge folios
#    endif
        for (const ggml_tensor * t : others) {
            make_private(t);
        }
        return true;
    }

    // The file's entry for t no longer fits this build (another layout: tuning.json's tq2_base3 changed in
    // an update, or BITNET_LAYOUT; another placement in the buffer): deleted, so the next load writes one
    // that does, instead of every later load repacking beside a useless file.
    void stale(const ggml_tensor * t, const char * why) {
        GGML_LOG_WARN("bitnet: %s: %s %s; deleted, the next load rebuilds it\n", path.c_str(), t->name, why);
        unlink(path.c_str());
        index.clear();  // the rest of this load repacks
    }

    bool map_cached(const ggml_tensor * t, const void * data, uint64_t src_off) {
        const auto it = index.find(t->name);
        if (it == index.end()) {  // e.g. a tensor left to ggml's kernels (a code 3) is never written to the file
            return false;
        }
        const file_entry & e = entries[it->second];
        if (e.buf_off != buf_off(t) || e.size != repacked_size(t) || e.src_off != src_off || e.ne0 != t->ne[0] ||
            e.ne1 != t->ne[1] || e.type != (int32_t) t->type || e.layout != (int32_t) layout_of(t)) {
            stale(t, e.layout != (int32_t) layout_of(t) ? "is in another layout there" : "is placed differently there");
            return false;
        }
#    if defined(MADV_POPULATE_READ)
        (void) madvise(t->data, e.size, MADV_POPULATE_READ);  // Linux >= 5.14; else pages fault in on first use
#    endif
        if (!same_edges(t, data, (const uint8_t *) t->data)) {
            GGML_LOG_WARN("bitnet: %s in %s differs from the model; deleted, the next load rebuilds it\n", t->name,
                          path.c_str());
            unlink(path.c_str());
            index.clear();  // the rest of this load repacks
            return false;
        }
        n_mapped++;
        return true;
    }

    void tensor_done(const ggml_tensor * t) {
        done.insert(t);
        if (done.size() < expected.size()) {
            return;
        }
        if (m == mode::read) {
            report("read " + std::to_string(n_mapped) + " of " + std::to_string(expected.size()) + " tensors from " +
                   path);
        } else if (m == mode::write && entries.empty()) {
            off("no tensor of this buffer came from " + src.path);
        } else if (m == mode::write) {
            finisher = std::thread([this] { finish(); });
        }
    }

    // data synced, then the table and header, synced, then the name: a named file is always whole
    void finish() {
        hdr.n_entries            = (uint32_t) entries.size();
        const std::string tmp    = path + "." + std::to_string(getpid()) + ".tmp";
        const std::string fdpath = "/proc/self/fd/" + std::to_string(fd);
        bool ok = fdatasync(fd) == 0 &&
                  pwrite_all(fd, entries.data(), entries.size() * sizeof(file_entry), hdr.table_off) &&
                  pwrite_all(fd, &hdr, sizeof hdr, 0) && fdatasync(fd) == 0;
        ok = ok && linkat(AT_FDCWD, fdpath.c_str(), AT_FDCWD, tmp.c_str(), AT_SYMLINK_FOLLOW) == 0;
        if (ok && rename(tmp.c_str(), path.c_str()) != 0) {
            unlink(tmp.c_str());
            ok = false;
        }
        // its pages are small folios as written: dropped, the next load reads them into huge ones
        (void) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        report(ok ? "wrote " + std::to_string(entries.size()) + " tensors to " + path
                  : "not written (" + path + ": " + std::strerror(errno) + ")");
    }

    void ensure_started(const void * data) {
        if (m == mode::unknown) {
            start(data);
        }
    }
};

repack_cache::repack_cache(uint8_t * base, size_t size) : s_(new repack_cache_state) {
    s_->base = base;
    s_->size = size;
    s_->page = (size_t) sysconf(_SC_PAGESIZE);
}

repack_cache::~repack_cache() {
    if (s_->finisher.joinable()) {
        s_->finisher.join();
    }
    if (s_->fd >= 0) {
        close(s_->fd);
    }
}

void repack_cache::announce(const ggml_tensor * t, bool ours) {
    std::lock_guard<std::mutex> lock(s_->mu);
    (ours ? s_->expected : s_->others).insert(t);
}

bool repack_cache::map(const ggml_tensor * t, const void * data) {
    std::lock_guard<std::mutex> lock(s_->mu);
    repack_cache_state & s = *s_;
    s.ensure_started(data);
    const bool read = s.m == repack_cache_state::mode::read;
    if (s.done.count(t) || !s.expected.count(t)) {  // set again (or never announced): private memory
        if (read) {
            s.make_private(t);
        }
        return false;
    }
    const auto     p        = (uintptr_t) data;
    const bool     from_src = p >= s.src.lo && p + ggml_nbytes(t) <= s.src.hi;  // e.g. not another split file
    const uint64_t src_off  = s.src.off + (p - s.src.lo);
    if (read) {
        if (from_src && s.map_cached(t, data, src_off)) {
            s.tensor_done(t);
            return true;
        }
        s.make_private(t);
    } else if (s.m == repack_cache_state::mode::write && from_src) {
        file_entry e{};
        std::snprintf(e.name, sizeof e.name, "%s", t->name);
        e.buf_off    = s.buf_off(t);
        e.size       = repacked_size(t);
        e.src_off    = src_off;
        e.ne0        = t->ne[0];
        e.ne1        = t->ne[1];
        e.type       = (int32_t) t->type;
        e.layout     = (int32_t) layout_of(t);
        s.pending[t] = e;  // written once repacked
    }
    return false;
}

void repack_cache::repacked(const ggml_tensor * t, bool ok) {
    std::lock_guard<std::mutex> lock(s_->mu);
    repack_cache_state & s  = *s_;
    const auto           it = s.pending.find(t);
    if (it != s.pending.end()) {
        // a copy into the file's page cache (writing through a shared mapping instead cost ~10x: a page
        // fault and block bookkeeping per page); this load keeps using its private memory
        const file_entry e = it->second;
        s.pending.erase(it);
        if (ok && s.m == repack_cache_state::mode::write) {
            if (pwrite_all(s.fd, t->data, e.size, k_image_off + e.buf_off)) {
                s.entries.push_back(e);
            } else {
                s.off("not written: " + std::string(std::strerror(errno)));
            }
        }
    }
    if (s.expected.count(t) && !s.done.count(t)) {
        s.tensor_done(t);
    }
}

void repack_cache::before_copy(const ggml_tensor * t, const void * data) {
    std::lock_guard<std::mutex> lock(s_->mu);
    s_->ensure_started(data);  // (a read's image mapping gave t private memory again)
    (void) t;
}

void repack_cache::drop_all() {
    std::lock_guard<std::mutex> lock(s_->mu);
    repack_cache_state & s = *s_;
    if (s.finisher.joinable()) {
        s.finisher.join();
    }
    void * p = mmap(s.base, s.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    GGML_ASSERT(p != MAP_FAILED && "bitnet: could not remap the weight buffer");
    if (s.m == repack_cache_state::mode::write) {
        s.entries.clear();
    }
    if (s.fd >= 0) {
        close(s.fd);
        s.fd = -1;
    }
    s.m = repack_cache_state::mode::off;
}

#else  // no repack cache: every tensor is repacked into the buffer

struct repack_cache_state {};

repack_cache::repack_cache(uint8_t *, size_t) {}

repack_cache::~repack_cache() = default;

void repack_cache::announce(const ggml_tensor *, bool) {}

bool repack_cache::map(const ggml_tensor *, const void *) { return false; }

void repack_cache::repacked(const ggml_tensor *, bool) {}

void repack_cache::before_copy(const ggml_tensor *, const void *) {}

void repack_cache::drop_all() {}

#endif

}  // namespace bitnet_ggml
