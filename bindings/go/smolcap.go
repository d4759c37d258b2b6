// Package smolcap captions images with SmolVLM / Idefics3 through the smolcap C library
// (libsmolcap, found with pkg-config).
//
// Ownership: Model, Session and Stream wrap C handles. Call Close when done; a finalizer frees
// anything forgotten, but Close releases memory deterministically. Close is idempotent and
// safe to call concurrently with other methods (it waits for calls in progress).
//
// Threads: a Model may be used from many goroutines (give each its own Session). A Session
// runs one call at a time: a concurrent call returns an *Error with Code StatusBusy. Cancel may
// be called from any goroutine. Errors are *Error values carrying the status code and the
// library's message.
package smolcap

/*
#cgo pkg-config: smolcap
#include <stdlib.h>
#include <smolcap.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Status is a SMOLCAP_STATUS_* code.
type Status int32

// Status codes (fixed numbers, see smolcap.h).
const (
	StatusOK              Status = C.SMOLCAP_STATUS_OK
	StatusInvalidArgument Status = C.SMOLCAP_STATUS_INVALID_ARGUMENT
	StatusUTF8            Status = C.SMOLCAP_STATUS_UTF8
	StatusIO              Status = C.SMOLCAP_STATUS_IO
	StatusFormat          Status = C.SMOLCAP_STATUS_FORMAT
	StatusUnsupported     Status = C.SMOLCAP_STATUS_UNSUPPORTED
	StatusImage           Status = C.SMOLCAP_STATUS_IMAGE
	StatusLimit           Status = C.SMOLCAP_STATUS_LIMIT
	StatusDevice          Status = C.SMOLCAP_STATUS_DEVICE
	StatusCancelled       Status = C.SMOLCAP_STATUS_CANCELLED
	StatusBusy            Status = C.SMOLCAP_STATUS_BUSY
	StatusPanic           Status = C.SMOLCAP_STATUS_PANIC
	StatusPoisoned        Status = C.SMOLCAP_STATUS_POISONED
	StatusInternal        Status = C.SMOLCAP_STATUS_INTERNAL
)

// String is the library's name for the code.
func (s Status) String() string {
	return C.GoString(C.smolcap_status_string(C.smolcap_status(s)))
}

// Error is a failed library call.
type Error struct {
	Code Status
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("smolcap: %s: %s", e.Code, e.Msg) }

// ErrClosed is returned by methods of a closed object.
var ErrClosed = errors.New("smolcap: object is closed")

// call runs f and, on failure, reads the calling thread's last error before anything else
// can run on that OS thread.
func call(f func() C.smolcap_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.SMOLCAP_STATUS_OK {
		return nil
	}
	return &Error{Code: Status(st), Msg: C.GoString(C.smolcap_last_error())}
}

// Version is the library version ("0.1.0").
func Version() string { return C.GoString(C.smolcap_version()) }

// Features lists the compiled backends ("cpu", "cpu,cuda", ...).
func Features() string { return C.GoString(C.smolcap_features()) }

// LiveObjects is the number of library handles not yet freed (for tests and leak hunting).
func LiveObjects() int { return int(C.smolcap_debug_live_objects()) }

// LoadOptions configures Load; the zero value means defaults.
type LoadOptions struct {
	Device   string // "cpu" (default), "cuda:N", "metal"
	Revision string // hub revision, default "main"
	Quantize string // weight storage quantized at load ("q8_0", "q4_0,vision=q8_0", ...); "" = dense (GGUF: as stored)
	Mmproj   string // the mmproj*.gguf of a GGUF text model; "" = the one beside it
}

// Model is a loaded model, usable from many goroutines.
type Model struct {
	mu sync.RWMutex
	p  *C.smolcap_model
}

// Load loads a model directory, a GGUF pair (FILE.gguf, or a directory holding it and its
// mmproj) or a hub repo id.
func Load(dirOrRepo string, opt *LoadOptions) (*Model, error) {
	var p C.smolcap_load_params
	if err := call(func() C.smolcap_status {
		return C.smolcap_load_params_init(&p, C.size_t(unsafe.Sizeof(p)))
	}); err != nil {
		return nil, err
	}
	cdir := C.CString(dirOrRepo)
	defer C.free(unsafe.Pointer(cdir))
	if opt != nil && opt.Device != "" {
		p.device = C.CString(opt.Device)
		defer C.free(unsafe.Pointer(p.device))
	}
	if opt != nil && opt.Revision != "" {
		p.revision = C.CString(opt.Revision)
		defer C.free(unsafe.Pointer(p.revision))
	}
	if opt != nil && opt.Quantize != "" {
		p.quantize = C.CString(opt.Quantize)
		defer C.free(unsafe.Pointer(p.quantize))
	}
	if opt != nil && opt.Mmproj != "" {
		p.mmproj = C.CString(opt.Mmproj)
		defer C.free(unsafe.Pointer(p.mmproj))
	}
	var out *C.smolcap_model
	if err := call(func() C.smolcap_status { return C.smolcap_model_load(cdir, &p, &out) }); err != nil {
		return nil, err
	}
	m := &Model{p: out}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// ModelInfo describes a model.
type ModelInfo struct {
	VocabSize, ImageSeqLen, TileSize, LongestEdge, HiddenSize, NumLayers uint32
	MaxPositionEmbeddings, EOSTokenID                                    uint32
	ModelType, DType, Device, Dir                                        string
}

// Info describes the model.
func (m *Model) Info() (ModelInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.p == nil {
		return ModelInfo{}, ErrClosed
	}
	var i C.smolcap_model_info
	i.struct_size = C.uint32_t(unsafe.Sizeof(i))
	err := call(func() C.smolcap_status { return C.smolcap_model_get_info(m.p, &i) })
	runtime.KeepAlive(m)
	if err != nil {
		return ModelInfo{}, err
	}
	return ModelInfo{
		uint32(i.vocab_size), uint32(i.image_seq_len), uint32(i.tile_size),
		uint32(i.longest_edge), uint32(i.hidden_size), uint32(i.num_layers),
		uint32(i.max_position_embeddings), uint32(i.eos_token_id),
		C.GoString(i.model_type), C.GoString(i.dtype), C.GoString(i.device), C.GoString(i.dir),
	}, nil
}

// Close frees the model (sessions made from it keep working). Idempotent.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p != nil {
		C.smolcap_model_free(m.p)
		m.p = nil
		runtime.SetFinalizer(m, nil)
	}
	return nil
}

// Strategy selects how tokens are chosen.
type Strategy uint32

// Strategies.
const (
	Greedy Strategy = C.SMOLCAP_STRATEGY_GREEDY
	Sample Strategy = C.SMOLCAP_STRATEGY_SAMPLE
	Beam   Strategy = C.SMOLCAP_STRATEGY_BEAM
)

// Params are generation settings. Start from DefaultParams.
type Params struct {
	Strategy          Strategy
	MaxNewTokens      uint32
	MinNewTokens      uint32
	Temperature       float32
	TopK              uint32
	TopP              float32
	Seed              uint64
	NumBeams          uint32
	LengthPenalty     float32
	EarlyStopping     uint32 // a SMOLCAP_EARLY_STOPPING_* value
	RepetitionPenalty float32
	Prompt            string // "" = the library default
	RawPrompt         bool   // Prompt is the whole prompt, with one <image> per image
	LongestEdge       uint32 // 0 = the model's
	MaxPromptTokens   uint32
	BatchSize         uint32
	VisionChunk       uint32
	MaxImagePixels    uint64
	MaxImageBytes     uint64
}

// DefaultParams are the library's defaults.
func DefaultParams() Params {
	var p C.smolcap_generate_params
	C.smolcap_generate_params_init(&p, C.size_t(unsafe.Sizeof(p)))
	return Params{
		Strategy: Strategy(p.strategy), MaxNewTokens: uint32(p.max_new_tokens),
		MinNewTokens: uint32(p.min_new_tokens), Temperature: float32(p.temperature),
		TopK: uint32(p.top_k), TopP: float32(p.top_p), Seed: uint64(p.seed),
		NumBeams: uint32(p.num_beams), LengthPenalty: float32(p.length_penalty),
		EarlyStopping: uint32(p.early_stopping), RepetitionPenalty: float32(p.repetition_penalty),
		MaxPromptTokens: uint32(p.max_prompt_tokens), BatchSize: uint32(p.batch_size),
		VisionChunk: uint32(p.vision_chunk), MaxImagePixels: uint64(p.max_image_pixels),
		MaxImageBytes: uint64(p.max_image_bytes),
	}
}

// cParams converts p; the returned free function releases the prompt string.
func cParams(p *Params) (C.smolcap_generate_params, func()) {
	var c C.smolcap_generate_params
	C.smolcap_generate_params_init(&c, C.size_t(unsafe.Sizeof(c)))
	if p == nil {
		return c, func() {}
	}
	c.strategy = C.uint32_t(p.Strategy)
	c.max_new_tokens = C.uint32_t(p.MaxNewTokens)
	c.min_new_tokens = C.uint32_t(p.MinNewTokens)
	c.temperature = C.float(p.Temperature)
	c.top_k = C.uint32_t(p.TopK)
	c.top_p = C.float(p.TopP)
	c.seed = C.uint64_t(p.Seed)
	c.num_beams = C.uint32_t(p.NumBeams)
	c.length_penalty = C.float(p.LengthPenalty)
	c.early_stopping = C.uint32_t(p.EarlyStopping)
	c.repetition_penalty = C.float(p.RepetitionPenalty)
	if p.RawPrompt {
		c.prompt_mode = C.SMOLCAP_PROMPT_RAW
	}
	c.longest_edge = C.uint32_t(p.LongestEdge)
	c.max_prompt_tokens = C.uint32_t(p.MaxPromptTokens)
	c.batch_size = C.uint32_t(p.BatchSize)
	c.vision_chunk = C.uint32_t(p.VisionChunk)
	c.max_image_pixels = C.uint64_t(p.MaxImagePixels)
	c.max_image_bytes = C.uint64_t(p.MaxImageBytes)
	if p.Prompt == "" {
		return c, func() {}
	}
	c.prompt = C.CString(p.Prompt)
	return c, func() { C.free(unsafe.Pointer(c.prompt)) }
}

// Image is an input image: an encoded file (Encoded) or raw pixels (RGB8, RGBA8).
type Image struct {
	kind          uint32
	data          []byte
	width, height uint32
	stride        int
}

// Encoded is a JPEG/PNG/WebP/GIF/BMP/TIFF file in memory.
func Encoded(data []byte) Image { return Image{kind: C.SMOLCAP_IMAGE_ENCODED, data: data} }

// RGB8 is raw 8-bit RGB pixels, rows stride bytes apart (0 = packed).
func RGB8(data []byte, width, height uint32, stride int) Image {
	return Image{kind: C.SMOLCAP_IMAGE_RGB8, data: data, width: width, height: height, stride: stride}
}

// RGBA8 is raw 8-bit RGBA pixels, rows stride bytes apart (0 = packed).
func RGBA8(data []byte, width, height uint32, stride int) Image {
	return Image{kind: C.SMOLCAP_IMAGE_RGBA8, data: data, width: width, height: height, stride: stride}
}

// cImages copies images into C memory (cgo forbids C memory holding Go pointers); the
// returned function frees it.
func cImages(ims []Image) (*C.smolcap_image, func()) {
	if len(ims) == 0 {
		return nil, func() {}
	}
	n := C.size_t(len(ims)) * C.size_t(unsafe.Sizeof(C.smolcap_image{}))
	arr := (*C.smolcap_image)(C.calloc(1, n))
	view := unsafe.Slice(arr, len(ims))
	for i, im := range ims {
		view[i].kind = C.uint32_t(im.kind)
		view[i].width = C.uint32_t(im.width)
		view[i].height = C.uint32_t(im.height)
		view[i].stride = C.size_t(im.stride)
		view[i].len = C.size_t(len(im.data))
		if len(im.data) > 0 {
			view[i].data = (*C.uint8_t)(C.CBytes(im.data))
		}
	}
	return arr, func() {
		for i := range view {
			C.free(unsafe.Pointer(view[i].data))
		}
		C.free(unsafe.Pointer(arr))
	}
}

// Caption is one generated caption.
type Caption struct {
	Text         string
	Tokens       []uint32
	PromptTokens uint64
	NumTiles     uint64
}

func copyCaptions(c *C.smolcap_captions) ([]Caption, error) {
	n := int(C.smolcap_captions_count(c))
	out := make([]Caption, 0, n)
	for i := 0; i < n; i++ {
		var text *C.char
		var tlen, nids C.size_t
		var ids *C.uint32_t
		var stats C.smolcap_caption_stats
		stats.struct_size = C.uint32_t(unsafe.Sizeof(stats))
		if err := call(func() C.smolcap_status {
			if st := C.smolcap_captions_text(c, C.size_t(i), &text, &tlen); st != 0 {
				return st
			}
			if st := C.smolcap_captions_tokens(c, C.size_t(i), &ids, &nids); st != 0 {
				return st
			}
			return C.smolcap_captions_stats(c, C.size_t(i), &stats)
		}); err != nil {
			return nil, err
		}
		toks := make([]uint32, int(nids))
		copy(toks, unsafe.Slice((*uint32)(unsafe.Pointer(ids)), int(nids)))
		out = append(out, Caption{
			Text:         C.GoStringN(text, C.int(tlen)),
			Tokens:       toks,
			PromptTokens: uint64(stats.prompt_tokens),
			NumTiles:     uint64(stats.num_tiles),
		})
	}
	return out, nil
}

// Session captions images; one call at a time.
type Session struct {
	mu sync.RWMutex
	p  *C.smolcap_session
}

// NewSession creates a session over m.
func (m *Model) NewSession() (*Session, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.p == nil {
		return nil, ErrClosed
	}
	var out *C.smolcap_session
	err := call(func() C.smolcap_status { return C.smolcap_session_new(m.p, &out) })
	runtime.KeepAlive(m)
	if err != nil {
		return nil, err
	}
	s := &Session{p: out}
	runtime.SetFinalizer(s, (*Session).Close)
	return s, nil
}

// Caption captions each image (nil params = defaults).
func (s *Session) Caption(images []Image, params *Params) ([]Caption, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.p == nil {
		return nil, ErrClosed
	}
	arr, freeImages := cImages(images)
	defer freeImages()
	cp, freeParams := cParams(params)
	defer freeParams()
	var out *C.smolcap_captions
	err := call(func() C.smolcap_status {
		return C.smolcap_caption(s.p, arr, C.size_t(len(images)), &cp, nil, nil, &out)
	})
	runtime.KeepAlive(s)
	if err != nil {
		return nil, err
	}
	defer C.smolcap_captions_free(out)
	return copyCaptions(out)
}

// NLL is a caption's negative log-likelihood.
type NLL struct {
	Total, Mean float64
	Tokens      uint64
}

// Score computes the log-likelihood of caption for image.
func (s *Session) Score(image Image, caption string, params *Params) (NLL, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.p == nil {
		return NLL{}, ErrClosed
	}
	arr, freeImages := cImages([]Image{image})
	defer freeImages()
	cp, freeParams := cParams(params)
	defer freeParams()
	ccap := C.CString(caption)
	defer C.free(unsafe.Pointer(ccap))
	var n C.smolcap_nll
	err := call(func() C.smolcap_status { return C.smolcap_session_score(s.p, arr, ccap, &cp, &n) })
	runtime.KeepAlive(s)
	if err != nil {
		return NLL{}, err
	}
	return NLL{float64(n.total), float64(n.mean), uint64(n.tokens)}, nil
}

// Cancel stops the call or stream in progress (from any goroutine).
func (s *Session) Cancel() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.p == nil {
		return ErrClosed
	}
	err := call(func() C.smolcap_status { return C.smolcap_session_cancel(s.p) })
	runtime.KeepAlive(s)
	return err
}

// Close frees the session (waiting for calls in progress). Idempotent.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		C.smolcap_session_free(s.p)
		s.p = nil
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

// Stream pulls the text of one caption as it is generated.
type Stream struct {
	mu sync.Mutex
	p  *C.smolcap_stream
}

// Stream starts captioning image on a library worker thread; the session is busy until the
// stream ends.
func (s *Session) Stream(image Image, params *Params) (*Stream, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.p == nil {
		return nil, ErrClosed
	}
	arr, freeImages := cImages([]Image{image})
	defer freeImages()
	cp, freeParams := cParams(params)
	defer freeParams()
	var out *C.smolcap_stream
	err := call(func() C.smolcap_status { return C.smolcap_stream_begin(s.p, arr, &cp, &out) })
	runtime.KeepAlive(s)
	if err != nil {
		return nil, err
	}
	st := &Stream{p: out}
	runtime.SetFinalizer(st, (*Stream).Close)
	return st, nil
}

// Next returns the next piece of text; ok is false at the end.
func (st *Stream) Next() (piece string, ok bool, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.p == nil {
		return "", false, ErrClosed
	}
	var p *C.char
	var n C.size_t
	err = call(func() C.smolcap_status { return C.smolcap_stream_next(st.p, &p, &n) })
	runtime.KeepAlive(st)
	if err != nil || p == nil {
		return "", false, err
	}
	return C.GoStringN(p, C.int(n)), true, nil
}

// Result is the finished caption (after Next reported the end).
func (st *Stream) Result() (Caption, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.p == nil {
		return Caption{}, ErrClosed
	}
	var c *C.smolcap_captions
	err := call(func() C.smolcap_status { return C.smolcap_stream_result(st.p, &c) })
	runtime.KeepAlive(st)
	if err != nil {
		return Caption{}, err
	}
	defer C.smolcap_captions_free(c)
	caps, err := copyCaptions(c)
	if err != nil {
		return Caption{}, err
	}
	return caps[0], nil
}

// Close stops (if running) and frees the stream. Idempotent.
func (st *Stream) Close() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.p != nil {
		C.smolcap_stream_free(st.p)
		st.p = nil
		runtime.SetFinalizer(st, nil)
	}
	return nil
}

// Adapter is a PEFT LoRA adapter loaded for one model, usable from many goroutines. Sessions
// that activate it keep their own reference, so it may be closed after Session.SetAdapters.
type Adapter struct {
	mu sync.RWMutex
	p  *C.smolcap_adapter
}

// LoadAdapter loads a PEFT adapter directory, validated against m.
func (m *Model) LoadAdapter(dir string) (*Adapter, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.p == nil {
		return nil, ErrClosed
	}
	cdir := C.CString(dir)
	defer C.free(unsafe.Pointer(cdir))
	var out *C.smolcap_adapter
	err := call(func() C.smolcap_status { return C.smolcap_adapter_load(m.p, cdir, &out) })
	runtime.KeepAlive(m)
	if err != nil {
		return nil, err
	}
	a := &Adapter{p: out}
	runtime.SetFinalizer(a, (*Adapter).Close)
	return a, nil
}

// AdapterInfo describes an adapter.
type AdapterInfo struct {
	Rank                             uint32
	Alpha                            float64
	NumLoRAModules, NumVisionModules uint32
	HasModulesToSave, UseRSLoRA      bool
	Dir                              string
}

// Info describes the adapter.
func (a *Adapter) Info() (AdapterInfo, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.p == nil {
		return AdapterInfo{}, ErrClosed
	}
	var i C.smolcap_adapter_info
	i.struct_size = C.uint32_t(unsafe.Sizeof(i))
	err := call(func() C.smolcap_status { return C.smolcap_adapter_get_info(a.p, &i) })
	runtime.KeepAlive(a)
	if err != nil {
		return AdapterInfo{}, err
	}
	return AdapterInfo{
		uint32(i.rank), float64(i.alpha), uint32(i.num_lora_modules),
		uint32(i.num_vision_modules), i.has_modules_to_save != 0, i.use_rslora != 0,
		C.GoString(i.dir),
	}, nil
}

// Close frees the adapter (sessions that activated it keep using it). Idempotent.
func (a *Adapter) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.p != nil {
		C.smolcap_adapter_free(a.p)
		a.p = nil
		runtime.SetFinalizer(a, nil)
	}
	return nil
}

// SetAdapters applies adapters[i] with multiplier scales[i] (nil scales = all 1.0) to every
// later caption, score and stream of s; no adapters restores the base model. The adapters must
// come from the session's model.
func (s *Session) SetAdapters(adapters []*Adapter, scales []float32) error {
	if scales != nil && len(scales) != len(adapters) {
		return &Error{Code: StatusInvalidArgument,
			Msg: fmt.Sprintf("SetAdapters: %d adapters but %d scales", len(adapters), len(scales))}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.p == nil {
		return ErrClosed
	}
	ptrs := make([]*C.smolcap_adapter, len(adapters))
	locked := map[*Adapter]bool{}
	for i, a := range adapters {
		if a == nil {
			continue // reported by the library as adapters[i] is NULL
		}
		if !locked[a] { // read-lock each adapter once (RWMutex read locks must not nest)
			locked[a] = true
			a.mu.RLock()
			defer a.mu.RUnlock()
		}
		if a.p == nil {
			return ErrClosed
		}
		ptrs[i] = a.p
	}
	var list **C.smolcap_adapter
	var sc *C.float
	if len(ptrs) > 0 {
		list = &ptrs[0]
	}
	if len(scales) > 0 {
		sc = (*C.float)(unsafe.Pointer(&scales[0]))
	}
	err := call(func() C.smolcap_status {
		return C.smolcap_session_set_adapters(s.p, list, sc, C.size_t(len(ptrs)))
	})
	runtime.KeepAlive(s)
	runtime.KeepAlive(adapters)
	return err
}

// AdapterSpec is one adapter of MergeSave: a PEFT adapter directory and its multiplier.
type AdapterSpec struct {
	Dir   string
	Scale float32
}

// MergeOptions configures MergeSave; the zero value means defaults.
type MergeOptions struct {
	Overwrite     bool   // replace a non-empty output directory
	MaxShardBytes uint64 // 0 = the library default (5 GiB)
	Revision      string // hub revision when the base is a repo id; "" = "main"
}

// MergeReport says what MergeSave did.
type MergeReport struct {
	MergedModules, ReplacedModules, Tensors, Shards, Warnings uint64
}

// MergeSave merges adapters into the checkpoint baseDirOrRepo and writes a complete model
// directory to outDir (works on the files; no loaded model needed).
func MergeSave(baseDirOrRepo string, adapters []AdapterSpec, outDir string, opt *MergeOptions) (MergeReport, error) {
	var p C.smolcap_merge_params
	if err := call(func() C.smolcap_status {
		return C.smolcap_merge_params_init(&p, C.size_t(unsafe.Sizeof(p)))
	}); err != nil {
		return MergeReport{}, err
	}
	if opt != nil {
		if opt.Overwrite {
			p.overwrite = 1
		}
		if opt.MaxShardBytes != 0 {
			p.max_shard_bytes = C.uint64_t(opt.MaxShardBytes)
		}
		if opt.Revision != "" {
			p.revision = C.CString(opt.Revision)
			defer C.free(unsafe.Pointer(p.revision))
		}
	}
	cbase := C.CString(baseDirOrRepo)
	defer C.free(unsafe.Pointer(cbase))
	cout := C.CString(outDir)
	defer C.free(unsafe.Pointer(cout))
	var specs *C.smolcap_adapter_spec
	if len(adapters) > 0 {
		specs = (*C.smolcap_adapter_spec)(C.calloc(C.size_t(len(adapters)), C.size_t(unsafe.Sizeof(C.smolcap_adapter_spec{}))))
		defer C.free(unsafe.Pointer(specs))
		view := unsafe.Slice(specs, len(adapters))
		for i, a := range adapters {
			view[i].dir = C.CString(a.Dir)
			defer C.free(unsafe.Pointer(view[i].dir))
			view[i].scale = C.float(a.Scale)
		}
	}
	var r C.smolcap_merge_report
	r.struct_size = C.uint32_t(unsafe.Sizeof(r))
	if err := call(func() C.smolcap_status {
		return C.smolcap_merge_save(cbase, specs, C.size_t(len(adapters)), cout, &p, &r)
	}); err != nil {
		return MergeReport{}, err
	}
	return MergeReport{uint64(r.merged_modules), uint64(r.replaced_modules), uint64(r.tensors),
		uint64(r.shards), uint64(r.warnings)}, nil
}

// Suite selects which implementations the caption metrics equal.
type Suite uint32

// Metric suites.
const (
	SuiteSeed Suite = C.SMOLCAP_SUITE_SEED // the seed's eval script (HF evaluate, rouge_score, pycocoevalcap CIDEr)
	SuiteCoco Suite = C.SMOLCAP_SUITE_COCO // pycocoevalcap COCOEvalCap on PTB tokens
)

// Scores are caption metric scores (fractions, not percentages).
type Scores struct {
	Metrics  []string             // metric names in scorecard order
	Corpus   map[string]float64   // corpus-level score per metric
	PerImage map[string][]float64 // per-image scores per metric
}

// ScoreCaptions scores cands[i] against the references refs[i] (each non-empty).
func ScoreCaptions(cands []string, refs [][]string, suite Suite) (*Scores, error) {
	if len(cands) != len(refs) {
		return nil, &Error{Code: StatusInvalidArgument,
			Msg: fmt.Sprintf("ScoreCaptions: %d candidates but %d reference sets", len(cands), len(refs))}
	}
	cstrs := func(ss []string) (**C.char, func()) {
		if len(ss) == 0 {
			return nil, func() {}
		}
		arr := (**C.char)(C.calloc(C.size_t(len(ss)), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		view := unsafe.Slice(arr, len(ss))
		for i, s := range ss {
			view[i] = C.CString(s)
		}
		return arr, func() {
			for _, p := range view {
				C.free(unsafe.Pointer(p))
			}
			C.free(unsafe.Pointer(arr))
		}
	}
	flat := make([]string, 0, len(refs))
	offsets := make([]C.size_t, 1, len(refs)+1)
	for _, r := range refs {
		flat = append(flat, r...)
		offsets = append(offsets, C.size_t(len(flat)))
	}
	cc, freeC := cstrs(cands)
	defer freeC()
	rr, freeR := cstrs(flat)
	defer freeR()
	var out *C.smolcap_scores
	if err := call(func() C.smolcap_status {
		return C.smolcap_score_captions(cc, C.size_t(len(cands)), rr, &offsets[0], C.uint32_t(suite), &out)
	}); err != nil {
		return nil, err
	}
	defer C.smolcap_scores_free(out)
	n := int(C.smolcap_scores_count(out))
	sc := &Scores{Corpus: map[string]float64{}, PerImage: map[string][]float64{}}
	for i := 0; i < int(C.smolcap_scores_metric_count(out)); i++ {
		var name *C.char
		if err := call(func() C.smolcap_status { return C.smolcap_scores_metric_name(out, C.size_t(i), &name) }); err != nil {
			return nil, err
		}
		var v C.double
		if err := call(func() C.smolcap_status { return C.smolcap_scores_corpus(out, name, &v) }); err != nil {
			return nil, err
		}
		m := C.GoString(name)
		sc.Metrics = append(sc.Metrics, m)
		sc.Corpus[m] = float64(v)
		per := make([]float64, n)
		for j := 0; j < n; j++ {
			if err := call(func() C.smolcap_status { return C.smolcap_scores_image(out, C.size_t(j), name, &v) }); err != nil {
				return nil, err
			}
			per[j] = float64(v)
		}
		sc.PerImage[m] = per
	}
	return sc, nil
}
