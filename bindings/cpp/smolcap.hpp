// smolcap.hpp: header-only C++17 wrapper over the smolcap C API (smolcap.h).
//
// - RAII, move-only handles (std::unique_ptr with the library's _free functions).
// - Failures throw smolcap::Error, carrying the status code and the library's message.
// - Callbacks never let an exception cross into the library: an exception thrown by a token
//   callback cancels the call and is rethrown from Session::caption once the library returned.
// - Threads: a Model may be used from many threads (each with its own Session); a Session or
//   Stream by one thread at a time (the library reports concurrent use as SMOLCAP_STATUS_BUSY);
//   Session::cancel may be called from any thread.
#ifndef SMOLCAP_HPP
#define SMOLCAP_HPP

#include <smolcap.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smolcap {

/// A failed smolcap call: code() is the SMOLCAP_STATUS_* value, what() the library's message.
class Error : public std::runtime_error {
public:
    Error(smolcap_status code, const std::string &msg) : std::runtime_error(msg), code_(code) {}
    /// The SMOLCAP_STATUS_* code.
    smolcap_status code() const noexcept { return code_; }
    /// The static name of the code ("busy", "cancelled", ...).
    const char *code_name() const noexcept { return smolcap_status_string(code_); }

private:
    smolcap_status code_;
};

namespace detail {

/// Throws Error for a non-OK status (reads the calling thread's last error immediately).
inline void check(smolcap_status st) {
    if (st != SMOLCAP_STATUS_OK) throw Error(st, smolcap_last_error());
}

struct ModelDeleter {
    void operator()(smolcap_model *p) const noexcept { smolcap_model_free(p); }
};
struct SessionDeleter {
    void operator()(smolcap_session *p) const noexcept { smolcap_session_free(p); }
};
struct CaptionsDeleter {
    void operator()(smolcap_captions *p) const noexcept { smolcap_captions_free(p); }
};
struct StreamDeleter {
    void operator()(smolcap_stream *p) const noexcept { smolcap_stream_free(p); }
};
struct AdapterDeleter {
    void operator()(smolcap_adapter *p) const noexcept { smolcap_adapter_free(p); }
};
struct ScoresDeleter {
    void operator()(smolcap_scores *p) const noexcept { smolcap_scores_free(p); }
};
using CaptionsPtr = std::unique_ptr<smolcap_captions, CaptionsDeleter>;

/// What the C callback trampoline needs.
struct CallbackContext {
    const std::function<bool(std::size_t, std::string_view)> *fn;
    smolcap_session *session;
    std::exception_ptr error;
};

}  // namespace detail
}  // namespace smolcap

extern "C" {
/// C-linkage trampoline for Session::caption: calls the std::function, converts its result to
/// the C convention and captures any exception (cancelling the call) instead of letting it
/// unwind into the library.
inline int32_t smolcap_hpp_on_piece(size_t index, const char *piece, size_t len, void *user) {
    auto *ctx = static_cast<smolcap::detail::CallbackContext *>(user);
    if (ctx->error) return 1;
    try {
        return (*ctx->fn)(index, std::string_view(piece, len)) ? 0 : 1;
    } catch (...) {
        ctx->error = std::current_exception();
        smolcap_session_cancel(ctx->session);
        return 1;
    }
}
}

namespace smolcap {

/// Library version string ("0.1.0").
inline std::string version() { return smolcap_version(); }

/// Compiled backends ("cpu", "cpu,cuda", ...).
inline std::string features() { return smolcap_features(); }

/// Options for Model::load.
struct LoadOptions {
    /// A SMOLCAP_DTYPE_* value.
    uint32_t dtype = SMOLCAP_DTYPE_DEFAULT;
    /// "cpu", "cuda:N", "metal".
    std::string device = "cpu";
    /// Hub revision; empty = "main".
    std::string revision;
    /// Weight storage quantized at load ("q8_0", "q4_0", "q4_k,vision=q8_0", ...; see
    /// docs/QUANTIZATION.md); empty = dense (a GGUF model: as the file stores it).
    std::string quantize;
    /// The mmproj*.gguf of a GGUF text model; empty = the one beside it.
    std::string mmproj;
};

/// Facts about a model (a copy; strings owned here).
struct ModelInfo {
    uint32_t vocab_size, image_seq_len, tile_size, longest_edge, hidden_size, num_layers,
        max_position_embeddings, eos_token_id;
    std::string model_type, dtype, device, dir;
};

/// Generation settings; starts from the library defaults.
struct GenerateParams {
    smolcap_generate_params c{};
    /// The prompt; empty = the library default.
    std::string prompt;

    GenerateParams() { detail::check(smolcap_generate_params_init(&c, sizeof c)); }
    /// A copy of the C struct whose `prompt` points into this object (valid while it lives).
    smolcap_generate_params get() const {
        smolcap_generate_params out = c;
        out.prompt = prompt.empty() ? nullptr : prompt.c_str();
        return out;
    }
};

/// An input image, borrowing the caller's bytes for the duration of a call.
struct Image {
    smolcap_image c{};

    /// An encoded file (JPEG, PNG, ...) in memory.
    static Image encoded(const void *data, std::size_t len) {
        Image im;
        im.c.kind = SMOLCAP_IMAGE_ENCODED;
        im.c.data = static_cast<const uint8_t *>(data);
        im.c.len = len;
        return im;
    }
    /// Raw 8-bit RGB (`rgba` false) or RGBA pixels, rows `stride` bytes apart (0 = packed).
    static Image raw(const void *data, std::size_t len, uint32_t width, uint32_t height,
                     bool rgba = false, std::size_t stride = 0) {
        Image im;
        im.c.kind = rgba ? SMOLCAP_IMAGE_RGBA8 : SMOLCAP_IMAGE_RGB8;
        im.c.data = static_cast<const uint8_t *>(data);
        im.c.len = len;
        im.c.width = width;
        im.c.height = height;
        im.c.stride = stride;
        return im;
    }
};

/// One caption, copied out of the library.
struct Caption {
    std::string text;
    std::vector<uint32_t> tokens;
    smolcap_caption_stats stats{};
};

/// Caption log-likelihood.
using Nll = smolcap_nll;

namespace detail {
inline std::vector<Caption> copy_captions(const smolcap_captions *c) {
    std::vector<Caption> out;
    std::size_t n = smolcap_captions_count(c);
    out.reserve(n);
    for (std::size_t i = 0; i < n; i++) {
        Caption cap;
        const char *text = nullptr;
        std::size_t len = 0;
        check(smolcap_captions_text(c, i, &text, &len));
        cap.text.assign(text, len);
        const uint32_t *ids = nullptr;
        std::size_t k = 0;
        check(smolcap_captions_tokens(c, i, &ids, &k));
        cap.tokens.assign(ids, ids + k);
        cap.stats.struct_size = sizeof cap.stats;
        check(smolcap_captions_stats(c, i, &cap.stats));
        out.push_back(std::move(cap));
    }
    return out;
}
}  // namespace detail

/// A loaded model. Move-only; const methods may be called from many threads.
class Model {
public:
    /// Loads a model directory, a GGUF pair (FILE.gguf or a directory holding it and its
    /// mmproj) or a hub repo id.
    static Model load(const std::string &dir_or_repo, const LoadOptions &opt = {}) {
        smolcap_load_params p;
        detail::check(smolcap_load_params_init(&p, sizeof p));
        p.dtype = opt.dtype;
        p.device = opt.device.c_str();
        p.revision = opt.revision.empty() ? nullptr : opt.revision.c_str();
        p.quantize = opt.quantize.empty() ? nullptr : opt.quantize.c_str();
        p.mmproj = opt.mmproj.empty() ? nullptr : opt.mmproj.c_str();
        smolcap_model *m = nullptr;
        detail::check(smolcap_model_load(dir_or_repo.c_str(), &p, &m));
        return Model(m);
    }

    ModelInfo info() const {
        smolcap_model_info i{};
        i.struct_size = sizeof i;
        detail::check(smolcap_model_get_info(p_.get(), &i));
        return ModelInfo{i.vocab_size,    i.image_seq_len, i.tile_size,
                         i.longest_edge,  i.hidden_size,   i.num_layers,
                         i.max_position_embeddings,        i.eos_token_id,
                         i.model_type,    i.dtype,         i.device,
                         i.dir};
    }

    /// The C handle (owned by this object).
    const smolcap_model *get() const noexcept { return p_.get(); }

private:
    explicit Model(smolcap_model *p) : p_(p) {}
    std::unique_ptr<smolcap_model, detail::ModelDeleter> p_;
};

/// Facts about a LoRA adapter (a copy; strings owned here).
struct AdapterInfo {
    uint32_t rank;
    double alpha;
    uint32_t num_lora_modules, num_vision_modules;
    bool has_modules_to_save, use_rslora;
    std::string dir;
};

/// A PEFT LoRA adapter loaded for one model. Move-only; const methods may be called from many
/// threads. Sessions keep their own reference: it may be destroyed after Session::set_adapters.
class Adapter {
public:
    /// Loads an adapter directory, validated against `model`.
    static Adapter load(const Model &model, const std::string &dir) {
        smolcap_adapter *a = nullptr;
        detail::check(smolcap_adapter_load(model.get(), dir.c_str(), &a));
        return Adapter(a);
    }

    AdapterInfo info() const {
        smolcap_adapter_info i{};
        i.struct_size = sizeof i;
        detail::check(smolcap_adapter_get_info(p_.get(), &i));
        return AdapterInfo{i.rank,
                           i.alpha,
                           i.num_lora_modules,
                           i.num_vision_modules,
                           i.has_modules_to_save != 0,
                           i.use_rslora != 0,
                           i.dir};
    }

    /// The C handle (owned by this object).
    const smolcap_adapter *get() const noexcept { return p_.get(); }

private:
    explicit Adapter(smolcap_adapter *p) : p_(p) {}
    std::unique_ptr<smolcap_adapter, detail::AdapterDeleter> p_;
};

/// One adapter of merge_save: a PEFT adapter directory and its multiplier.
struct AdapterSpec {
    std::string dir;
    float scale = 1.0f;
};

/// Options of merge_save.
struct MergeOptions {
    /// Replace a non-empty output directory.
    bool overwrite = false;
    /// Largest safetensors file; 0 = the library default (5 GiB).
    uint64_t max_shard_bytes = 0;
    /// Hub revision when the base is a repo id; empty = "main".
    std::string revision;
};

/// What merge_save did.
using MergeReport = smolcap_merge_report;

/// Merges adapters into the checkpoint `base_dir_or_repo` and writes a complete model
/// directory to `out_dir` (works on the files; no loaded model needed).
inline MergeReport merge_save(const std::string &base_dir_or_repo,
                              const std::vector<AdapterSpec> &adapters,
                              const std::string &out_dir, const MergeOptions &opt = {}) {
    smolcap_merge_params p;
    detail::check(smolcap_merge_params_init(&p, sizeof p));
    p.overwrite = opt.overwrite ? 1 : 0;
    if (opt.max_shard_bytes != 0) p.max_shard_bytes = opt.max_shard_bytes;
    p.revision = opt.revision.empty() ? nullptr : opt.revision.c_str();
    std::vector<smolcap_adapter_spec> specs;
    specs.reserve(adapters.size());
    for (const auto &a : adapters) specs.push_back(smolcap_adapter_spec{a.dir.c_str(), a.scale});
    MergeReport r{};
    r.struct_size = sizeof r;
    detail::check(smolcap_merge_save(base_dir_or_repo.c_str(), specs.data(), specs.size(),
                                     out_dir.c_str(), &p, &r));
    return r;
}

/// Which implementations the caption metrics equal.
enum class Suite : uint32_t { Seed = SMOLCAP_SUITE_SEED, Coco = SMOLCAP_SUITE_COCO };

/// Caption metric scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr). Move-only; const methods may
/// be called from many threads.
class Scores {
public:
    /// Number of images scored.
    std::size_t size() const noexcept { return smolcap_scores_count(p_.get()); }
    /// Metric names in scorecard order.
    std::vector<std::string> metrics() const {
        std::vector<std::string> out;
        std::size_t n = smolcap_scores_metric_count(p_.get());
        for (std::size_t i = 0; i < n; i++) {
            const char *name = nullptr;
            detail::check(smolcap_scores_metric_name(p_.get(), i, &name));
            out.emplace_back(name);
        }
        return out;
    }
    /// Corpus-level score of `metric`.
    double corpus(const std::string &metric) const {
        double v = 0;
        detail::check(smolcap_scores_corpus(p_.get(), metric.c_str(), &v));
        return v;
    }
    /// Score of `metric` for image `i`.
    double image(std::size_t i, const std::string &metric) const {
        double v = 0;
        detail::check(smolcap_scores_image(p_.get(), i, metric.c_str(), &v));
        return v;
    }
    /// The C handle (owned by this object).
    const smolcap_scores *get() const noexcept { return p_.get(); }

private:
    friend Scores score_captions(const std::vector<std::string> &,
                                 const std::vector<std::vector<std::string>> &, Suite);
    explicit Scores(smolcap_scores *p) : p_(p) {}
    std::unique_ptr<smolcap_scores, detail::ScoresDeleter> p_;
};

/// Scores `cands[i]` against the references `refs[i]` (each non-empty).
inline Scores score_captions(const std::vector<std::string> &cands,
                             const std::vector<std::vector<std::string>> &refs,
                             Suite suite = Suite::Seed) {
    if (cands.size() != refs.size())
        throw Error(SMOLCAP_STATUS_INVALID_ARGUMENT,
                    "score_captions: " + std::to_string(cands.size()) + " candidates but " +
                        std::to_string(refs.size()) + " reference sets");
    std::vector<const char *> c, r;
    std::vector<std::size_t> offsets{0};
    c.reserve(cands.size());
    for (const auto &s : cands) c.push_back(s.c_str());
    for (const auto &set : refs) {
        for (const auto &s : set) r.push_back(s.c_str());
        offsets.push_back(r.size());
    }
    smolcap_scores *out = nullptr;
    detail::check(smolcap_score_captions(c.data(), c.size(), r.data(), offsets.data(),
                                         static_cast<uint32_t>(suite), &out));
    return Scores(out);
}

/// A pull stream over one caption. Move-only.
class Stream {
public:
    /// The next piece of text, or std::nullopt at the end. Throws on errors (e.g. cancelled).
    std::optional<std::string> next() {
        const char *piece = nullptr;
        std::size_t len = 0;
        detail::check(smolcap_stream_next(p_.get(), &piece, &len));
        if (piece == nullptr) return std::nullopt;
        return std::string(piece, len);
    }
    /// The finished caption (after next() returned std::nullopt).
    Caption result() {
        smolcap_captions *c = nullptr;
        detail::check(smolcap_stream_result(p_.get(), &c));
        detail::CaptionsPtr owned(c);
        return detail::copy_captions(owned.get()).at(0);
    }

private:
    friend class Session;
    explicit Stream(smolcap_stream *p) : p_(p) {}
    std::unique_ptr<smolcap_stream, detail::StreamDeleter> p_;
};

/// A captioning session over a model. Move-only; one thread at a time (cancel() from any).
class Session {
public:
    /// Called with (image index, text piece); return false to stop that caption.
    using OnPiece = std::function<bool(std::size_t, std::string_view)>;

    explicit Session(const Model &m) {
        smolcap_session *s = nullptr;
        detail::check(smolcap_session_new(m.get(), &s));
        p_.reset(s);
    }

    /// Captions each image. Exceptions thrown by `on_piece` cancel the call and are rethrown.
    std::vector<Caption> caption(const std::vector<Image> &images,
                                 const GenerateParams &params = GenerateParams(),
                                 const OnPiece &on_piece = OnPiece()) {
        std::vector<smolcap_image> c;
        c.reserve(images.size());
        for (const auto &im : images) c.push_back(im.c);
        detail::CallbackContext ctx{&on_piece, p_.get(), nullptr};
        smolcap_captions *out = nullptr;
        const smolcap_generate_params cp = params.get();
        smolcap_status st =
            smolcap_caption(p_.get(), c.data(), c.size(), &cp,
                            on_piece ? smolcap_hpp_on_piece : nullptr, &ctx, &out);
        detail::CaptionsPtr owned(out);
        if (ctx.error) std::rethrow_exception(ctx.error);
        detail::check(st);
        return detail::copy_captions(owned.get());
    }

    /// Captions one image.
    Caption caption(const Image &image, const GenerateParams &params = GenerateParams()) {
        return caption(std::vector<Image>{image}, params).at(0);
    }

    /// Starts a pull stream over one image (the session is busy until it ends).
    Stream stream(const Image &image, const GenerateParams &params = GenerateParams()) {
        smolcap_stream *s = nullptr;
        const smolcap_generate_params cp = params.get();
        detail::check(smolcap_stream_begin(p_.get(), &image.c, &cp, &s));
        return Stream(s);
    }

    /// Log-likelihood of `caption` for `image`.
    Nll score(const Image &image, const std::string &caption,
              const GenerateParams &params = GenerateParams()) {
        Nll n{};
        const smolcap_generate_params cp = params.get();
        detail::check(smolcap_session_score(p_.get(), &image.c, caption.c_str(), &cp, &n));
        return n;
    }

    /// Applies `adapters[i]` with multiplier `scales[i]` (empty `scales` = all 1.0) to every
    /// later caption, score and stream; an empty list restores the base model. The adapters
    /// must come from this session's model; they may be destroyed afterwards.
    void set_adapters(const std::vector<const Adapter *> &adapters,
                      const std::vector<float> &scales = {}) {
        if (!scales.empty() && scales.size() != adapters.size())
            throw Error(SMOLCAP_STATUS_INVALID_ARGUMENT,
                        "set_adapters: " + std::to_string(adapters.size()) + " adapters but " +
                            std::to_string(scales.size()) + " scales");
        std::vector<const smolcap_adapter *> c;
        c.reserve(adapters.size());
        for (const Adapter *a : adapters) c.push_back(a ? a->get() : nullptr);
        detail::check(smolcap_session_set_adapters(p_.get(), c.empty() ? nullptr : c.data(),
                                                   scales.empty() ? nullptr : scales.data(),
                                                   c.size()));
    }

    /// Removes all adapters (the base model again).
    void clear_adapters() { detail::check(smolcap_session_set_adapters(p_.get(), nullptr, nullptr, 0)); }

    /// Cancels the call or stream in progress; callable from any thread.
    void cancel() { detail::check(smolcap_session_cancel(p_.get())); }

    /// The C handle (owned by this object).
    smolcap_session *get() const noexcept { return p_.get(); }

private:
    std::unique_ptr<smolcap_session, detail::SessionDeleter> p_;
};

}  // namespace smolcap

#endif  // SMOLCAP_HPP
