// Swift wrapper over the smolcap C API.
//
// NOT EXERCISED BY CI: no Swift toolchain exists on the CI machines (only the module map is
// compiled, with clang). Treat this layer as untested.
//
// Ownership: Model, Session and the stream objects are classes whose deinit frees the C handle.
// Threads: a Model may be shared across threads and tasks; a Session runs one call at a time
// (a concurrent call throws SmolcapError with code SMOLCAP_STATUS_BUSY); cancel() works from
// any thread.
import CSmolcap
import Foundation

/// A failed library call: `code` is a SMOLCAP_STATUS_* value, `message` the library's text.
public struct SmolcapError: Error, CustomStringConvertible {
    public let code: Int32
    public let message: String

    public var description: String {
        "smolcap: \(String(cString: smolcap_status_string(code))): \(message)"
    }
}

/// Throws for a non-OK status, reading the thread's last error immediately (no suspension point
/// between the call and this read, so the thread cannot change).
@inline(__always)
func check(_ status: Int32) throws {
    if status != SMOLCAP_STATUS_OK {
        throw SmolcapError(code: status, message: String(cString: smolcap_last_error()))
    }
}

/// The library version string.
public var smolcapVersion: String { String(cString: smolcap_version()) }

/// An input image.
public enum Image {
    /// An encoded file (JPEG, PNG, WebP, GIF, BMP, TIFF).
    case encoded(Data)
    /// Raw 8-bit RGB pixels, rows `stride` bytes apart (0 = packed).
    case rgb8(Data, width: UInt32, height: UInt32, stride: Int = 0)
    /// Raw 8-bit RGBA pixels, rows `stride` bytes apart (0 = packed).
    case rgba8(Data, width: UInt32, height: UInt32, stride: Int = 0)
}

/// C copies of images, freed on deinit.
final class CImages {
    let array: UnsafeMutablePointer<smolcap_image>
    let count: Int
    private var buffers: [UnsafeMutableRawPointer] = []

    init(_ images: [Image]) {
        count = images.count
        array = UnsafeMutablePointer<smolcap_image>.allocate(capacity: max(images.count, 1))
        for (i, image) in images.enumerated() {
            var c = smolcap_image()
            let data: Data
            switch image {
            case .encoded(let d):
                c.kind = UInt32(SMOLCAP_IMAGE_ENCODED)
                data = d
            case .rgb8(let d, let w, let h, let s):
                c.kind = UInt32(SMOLCAP_IMAGE_RGB8)
                (c.width, c.height, c.stride) = (w, h, s)
                data = d
            case .rgba8(let d, let w, let h, let s):
                c.kind = UInt32(SMOLCAP_IMAGE_RGBA8)
                (c.width, c.height, c.stride) = (w, h, s)
                data = d
            }
            let buf = UnsafeMutableRawPointer.allocate(byteCount: max(data.count, 1), alignment: 1)
            data.copyBytes(to: buf.assumingMemoryBound(to: UInt8.self), count: data.count)
            buffers.append(buf)
            c.data = UnsafePointer(buf.assumingMemoryBound(to: UInt8.self))
            c.len = data.count
            array.advanced(by: i).initialize(to: c)
        }
    }

    deinit {
        array.deinitialize(count: count)
        array.deallocate()
        buffers.forEach { $0.deallocate() }
    }
}

/// Generation settings; starts from the library defaults.
public struct GenerateParams {
    public var c: smolcap_generate_params
    /// The prompt; nil = the library default.
    public var prompt: String?

    public init() {
        c = smolcap_generate_params()
        smolcap_generate_params_init(&c, MemoryLayout<smolcap_generate_params>.size)
    }

    /// Runs `body` with a C struct whose prompt pointer is valid during the call.
    func withC<R>(_ body: (UnsafePointer<smolcap_generate_params>) throws -> R) rethrows -> R {
        var copy = c
        guard let prompt = prompt else { return try body(&copy) }
        return try prompt.withCString { p in
            copy.prompt = p
            return try body(&copy)
        }
    }
}

/// One caption.
public struct Caption {
    public let text: String
    public let tokens: [UInt32]
}

func copyCaptions(_ c: OpaquePointer) throws -> [Caption] {
    var out: [Caption] = []
    for i in 0..<smolcap_captions_count(c) {
        var text: UnsafePointer<CChar>? = nil
        var len = 0
        try check(smolcap_captions_text(c, i, &text, &len))
        var ids: UnsafePointer<UInt32>? = nil
        var n = 0
        try check(smolcap_captions_tokens(c, i, &ids, &n))
        let bytes = UnsafeRawBufferPointer(start: text, count: len)
        out.append(Caption(text: String(decoding: bytes, as: UTF8.self),
                           tokens: Array(UnsafeBufferPointer(start: ids, count: n))))
    }
    return out
}

/// A loaded model, shareable across threads.
public final class Model: @unchecked Sendable {
    let handle: OpaquePointer

    /// Loads a model directory or hub repo id.
    public init(path: String, device: String = "cpu", revision: String? = nil) throws {
        var p = smolcap_load_params()
        try check(smolcap_load_params_init(&p, MemoryLayout<smolcap_load_params>.size))
        var out: OpaquePointer? = nil
        try device.withCString { dev in
            p.device = dev
            if let revision = revision {
                try revision.withCString { rev in
                    p.revision = rev
                    try check(smolcap_model_load(path, &p, &out))
                }
            } else {
                try check(smolcap_model_load(path, &p, &out))
            }
        }
        handle = out!
    }

    deinit { smolcap_model_free(handle) }

    /// The `model_type` from config.json.
    public func modelType() throws -> String {
        var info = smolcap_model_info()
        info.struct_size = UInt32(MemoryLayout<smolcap_model_info>.size)
        try check(smolcap_model_get_info(handle, &info))
        return String(cString: info.model_type)
    }
}

/// Owns a C stream; frees (and stops) it on deinit.
final class StreamHandle: @unchecked Sendable {
    let handle: OpaquePointer
    init(_ h: OpaquePointer) { handle = h }
    deinit { smolcap_stream_free(handle) }
}

/// A captioning session: one call at a time; cancel() from any thread.
public final class Session: @unchecked Sendable {
    let handle: OpaquePointer

    public init(model: Model) throws {
        var out: OpaquePointer? = nil
        try check(smolcap_session_new(model.handle, &out))
        handle = out!
    }

    deinit { smolcap_session_free(handle) }

    /// Captions each image.
    public func caption(_ images: [Image], params: GenerateParams = GenerateParams()) throws
        -> [Caption]
    {
        let c = CImages(images)
        var out: OpaquePointer? = nil
        try params.withC { p in
            try check(smolcap_caption(handle, c.array, c.count, p, nil, nil, &out))
        }
        defer { smolcap_captions_free(out) }
        return try copyCaptions(out!)
    }

    /// Log-likelihood (total, mean, tokens) of `caption` for `image`.
    public func score(_ image: Image, caption: String, params: GenerateParams = GenerateParams())
        throws -> smolcap_nll
    {
        let c = CImages([image])
        var nll = smolcap_nll()
        try params.withC { p in
            try check(smolcap_session_score(handle, c.array, caption, p, &nll))
        }
        return nll
    }

    /// Cancels the call or stream in progress.
    public func cancel() { _ = smolcap_session_cancel(handle) }

    /// Streams the caption of `image` as text pieces. The pulls run on a dedicated thread (the
    /// library call blocks); ending the iteration early cancels generation.
    public func stream(_ image: Image, params: GenerateParams = GenerateParams()) throws
        -> AsyncThrowingStream<String, Error>
    {
        let c = CImages([image])
        var out: OpaquePointer? = nil
        try params.withC { p in
            try check(smolcap_stream_begin(handle, c.array, p, &out))
        }
        let stream = StreamHandle(out!)
        return AsyncThrowingStream { continuation in
            let puller = Thread {
                while true {
                    var piece: UnsafePointer<CChar>? = nil
                    var len = 0
                    let status = smolcap_stream_next(stream.handle, &piece, &len)
                    if status != SMOLCAP_STATUS_OK {
                        continuation.finish(throwing: SmolcapError(
                            code: status, message: String(cString: smolcap_last_error())))
                        return
                    }
                    guard let piece = piece else {
                        continuation.finish()
                        return
                    }
                    let bytes = UnsafeRawBufferPointer(start: piece, count: len)
                    continuation.yield(String(decoding: bytes, as: UTF8.self))
                }
            }
            continuation.onTermination = { [self] termination in
                if case .cancelled = termination { self.cancel() }
            }
            puller.start()
        }
    }
}

/// Facts about a LoRA adapter.
public struct AdapterInfo {
    public let rank: UInt32
    public let alpha: Double
    public let numLoRAModules: UInt32
    public let numVisionModules: UInt32
    public let hasModulesToSave: Bool
    public let useRSLoRA: Bool
    public let dir: String
}

/// A PEFT LoRA adapter loaded for one model, shareable across threads. Sessions that activate
/// it keep their own reference, so it may be released after `Session.setAdapters`.
public final class Adapter: @unchecked Sendable {
    let handle: OpaquePointer

    /// Loads an adapter directory, validated against `model`.
    public init(model: Model, path: String) throws {
        var out: OpaquePointer? = nil
        try check(smolcap_adapter_load(model.handle, path, &out))
        handle = out!
    }

    deinit { smolcap_adapter_free(handle) }

    public func info() throws -> AdapterInfo {
        var i = smolcap_adapter_info()
        i.struct_size = UInt32(MemoryLayout<smolcap_adapter_info>.size)
        try check(smolcap_adapter_get_info(handle, &i))
        return AdapterInfo(rank: i.rank, alpha: i.alpha, numLoRAModules: i.num_lora_modules,
                           numVisionModules: i.num_vision_modules,
                           hasModulesToSave: i.has_modules_to_save != 0,
                           useRSLoRA: i.use_rslora != 0, dir: String(cString: i.dir))
    }
}

extension Session {
    /// Applies `adapters[i]` with multiplier `scales[i]` (nil = all 1.0) to every later call;
    /// an empty list restores the base model.
    public func setAdapters(_ adapters: [Adapter], scales: [Float]? = nil) throws {
        if let scales = scales, scales.count != adapters.count {
            throw SmolcapError(code: SMOLCAP_STATUS_INVALID_ARGUMENT,
                               message: "setAdapters: \(adapters.count) adapters but \(scales.count) scales")
        }
        let handles: [OpaquePointer?] = adapters.map { $0.handle }
        try withExtendedLifetime(adapters) {
            try handles.withUnsafeBufferPointer { hp in
                if let scales = scales {
                    try scales.withUnsafeBufferPointer { sp in
                        try check(smolcap_session_set_adapters(handle, hp.baseAddress, sp.baseAddress,
                                                               hp.count))
                    }
                } else {
                    try check(smolcap_session_set_adapters(handle, hp.baseAddress, nil, hp.count))
                }
            }
        }
    }
}

/// Merges adapters (directory, multiplier) into the checkpoint `base` (a directory or hub repo
/// id) and writes a complete model directory to `outDir`.
@discardableResult
public func mergeSave(base: String, adapters: [(dir: String, scale: Float)], outDir: String,
                      overwrite: Bool = false, maxShardBytes: UInt64 = 0) throws
    -> smolcap_merge_report
{
    var p = smolcap_merge_params()
    try check(smolcap_merge_params_init(&p, MemoryLayout<smolcap_merge_params>.size))
    p.overwrite = overwrite ? 1 : 0
    if maxShardBytes != 0 { p.max_shard_bytes = maxShardBytes }
    let dirs = adapters.map { strdup($0.dir) }
    defer { dirs.forEach { free($0) } }
    let specs = zip(dirs, adapters).map { smolcap_adapter_spec(dir: UnsafePointer($0.0), scale: $0.1.scale) }
    var r = smolcap_merge_report()
    r.struct_size = UInt32(MemoryLayout<smolcap_merge_report>.size)
    try specs.withUnsafeBufferPointer { sp in
        try check(smolcap_merge_save(base, sp.baseAddress, sp.count, outDir, &p, &r))
    }
    return r
}

/// Which implementations the caption metrics equal.
public enum MetricSuite: UInt32 {
    case seed = 0  // SMOLCAP_SUITE_SEED
    case coco = 1  // SMOLCAP_SUITE_COCO
}

/// Caption metric scores (fractions, not percentages).
public struct Scores {
    /// Metric names in scorecard order.
    public let metrics: [String]
    public let corpus: [String: Double]
    public let perImage: [String: [Double]]
}

/// Scores `cands[i]` against the references `refs[i]` (each non-empty).
public func scoreCaptions(_ cands: [String], refs: [[String]], suite: MetricSuite = .seed) throws
    -> Scores
{
    if cands.count != refs.count {
        throw SmolcapError(code: SMOLCAP_STATUS_INVALID_ARGUMENT,
                           message: "scoreCaptions: \(cands.count) candidates but \(refs.count) reference sets")
    }
    let c: [UnsafeMutablePointer<CChar>?] = cands.map { strdup($0) }
    let flat = refs.flatMap { $0 }
    let r: [UnsafeMutablePointer<CChar>?] = flat.map { strdup($0) }
    defer { (c + r).forEach { free($0) } }
    var offsets = [0]
    for set in refs { offsets.append(offsets.last! + set.count) }
    let cc = c.map { UnsafePointer($0) }
    let rc = r.map { UnsafePointer($0) }
    var out: OpaquePointer? = nil
    try cc.withUnsafeBufferPointer { cp in
        try rc.withUnsafeBufferPointer { rp in
            try check(smolcap_score_captions(cp.baseAddress, cp.count, rp.baseAddress, offsets,
                                             suite.rawValue, &out))
        }
    }
    defer { smolcap_scores_free(out) }
    var metrics: [String] = []
    var corpus: [String: Double] = [:]
    var perImage: [String: [Double]] = [:]
    let n = smolcap_scores_count(out)
    for i in 0..<smolcap_scores_metric_count(out) {
        var name: UnsafePointer<CChar>? = nil
        try check(smolcap_scores_metric_name(out, i, &name))
        let m = String(cString: name!)
        var v = 0.0
        try check(smolcap_scores_corpus(out, name, &v))
        corpus[m] = v
        var per: [Double] = []
        for j in 0..<n {
            try check(smolcap_scores_image(out, j, name, &v))
            per.append(v)
        }
        perImage[m] = per
        metrics.append(m)
    }
    return Scores(metrics: metrics, corpus: corpus, perImage: perImage)
}
