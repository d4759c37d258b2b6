package smolcap

// Tests on the tiny fixture. Environment (set by tests/run_native.sh):
// SMOLCAP_MODEL_DIR, SMOLCAP_IMAGES_DIR, SMOLCAP_EXPECTED (the Rust path's captions).

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	tally          sync.Mutex
	passed, failed int
)

// track records the outcome of a test for the "N passed, N failed" line.
func track(t *testing.T) {
	t.Cleanup(func() {
		tally.Lock()
		defer tally.Unlock()
		if t.Failed() {
			failed++
		} else {
			passed++
		}
	})
}

func TestMain(m *testing.M) {
	code := m.Run()
	// Every object must be gone once closed or collected.
	for i := 0; i < 50 && LiveObjects() != 0; i++ {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	if n := LiveObjects(); n != 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d library objects left alive\n", n)
		failed++
		code = 1
	} else {
		passed++
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 && code == 0 {
		code = 1
	}
	os.Exit(code)
}

type expected struct {
	tokens []uint32
	text   string
}

func env(t *testing.T, k string) string {
	v := os.Getenv(k)
	if v == "" {
		t.Skipf("%s not set (run tests/run_native.sh)", k)
	}
	return v
}

func readExpected(t *testing.T) map[string]expected {
	f, err := os.Open(env(t, "SMOLCAP_EXPECTED"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]expected{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) != 4 || fs[0] != "caption" {
			continue
		}
		var e expected
		for _, s := range strings.Fields(fs[2]) {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			e.tokens = append(e.tokens, uint32(v))
		}
		b, err := hex.DecodeString(fs[3])
		if err != nil {
			t.Fatal(err)
		}
		e.text = string(b)
		out[fs[1]] = e
	}
	return out
}

func image(t *testing.T, name string) Image {
	b, err := os.ReadFile(filepath.Join(env(t, "SMOLCAP_IMAGES_DIR"), name))
	if err != nil {
		t.Fatal(err)
	}
	return Encoded(b)
}

func open(t *testing.T) (*Model, *Session) {
	m, err := Load(env(t, "SMOLCAP_MODEL_DIR"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}

func greedy12() *Params {
	p := DefaultParams()
	p.MaxNewTokens = 12
	return &p
}

func TestCaptionsMatchRust(t *testing.T) {
	track(t)
	want := readExpected(t)
	m, s := open(t)
	defer m.Close()
	defer s.Close()
	if v := Version(); v == "" || !strings.Contains(Features(), "cpu") {
		t.Fatalf("version %q features %q", v, Features())
	}
	info, err := m.Info()
	if err != nil || info.ModelType != "idefics3" || info.VocabSize != 600 {
		t.Fatalf("info %+v %v", info, err)
	}
	files := []string{"photo_640x480.png", "tiny_20x15.png", "gray_120x90.png", "photo_640x480.jpg"}
	var ims []Image
	for _, f := range files {
		ims = append(ims, image(t, f))
		c, err := s.Caption([]Image{ims[len(ims)-1]}, greedy12())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c[0].Tokens, want[f].tokens) || c[0].Text != want[f].text {
			t.Errorf("%s: got %v %q, Rust %v %q", f, c[0].Tokens, c[0].Text, want[f].tokens, want[f].text)
		}
	}
	p := greedy12()
	p.BatchSize = 3
	all, err := s.Caption(ims, p)
	if err != nil || len(all) != len(ims) {
		t.Fatal(len(all), err)
	}
	for i, f := range files {
		if !reflect.DeepEqual(all[i].Tokens, want[f].tokens) {
			t.Errorf("%s batched: %v", f, all[i].Tokens)
		}
	}
	// Sampling and beam search cross the boundary with the same settings as Rust.
	p = greedy12()
	p.Strategy, p.Temperature, p.TopK, p.TopP, p.Seed = Sample, 0.8, 50, 0.9, 7
	c, err := s.Caption(ims[:1], p)
	if err != nil || !reflect.DeepEqual(c[0].Tokens, want["sample"].tokens) {
		t.Errorf("sample: %v %v", c, err)
	}
	p = greedy12()
	p.Strategy, p.NumBeams = Beam, 3
	c, err = s.Caption(ims[:1], p)
	if err != nil || !reflect.DeepEqual(c[0].Tokens, want["beam3"].tokens) {
		t.Errorf("beam3: %v %v", c, err)
	}
	nll, err := s.Score(ims[0], "a photo of a cat", nil)
	if err != nil || nll.Tokens < 2 || nll.Total <= 0 {
		t.Errorf("score %+v %v", nll, err)
	}
}

func TestRawPixels(t *testing.T) {
	track(t)
	want := readExpected(t)["raw"]
	m, s := open(t)
	defer m.Close()
	defer s.Close()
	w, h := 64, 48
	rgb := make([]byte, w*h*3)
	rgba := make([]byte, w*h*4)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			px := []byte{byte((7*x + 3*y) % 256), byte((x * y) % 256), byte((x + 2*y) % 256)}
			copy(rgb[(y*w+x)*3:], px)
			copy(rgba[(y*w+x)*4:], append(px, 255))
		}
	}
	c, err := s.Caption([]Image{RGB8(rgb, 64, 48, 0), RGBA8(rgba, 64, 48, 0)}, greedy12())
	if err != nil {
		t.Fatal(err)
	}
	for i := range c {
		if !reflect.DeepEqual(c[i].Tokens, want.tokens) || c[i].Text != want.text {
			t.Errorf("raw %d: %v", i, c[i].Tokens)
		}
	}
}

func TestStream(t *testing.T) {
	track(t)
	want := readExpected(t)["photo_640x480.jpg"]
	m, s := open(t)
	defer m.Close()
	defer s.Close()
	st, err := s.Stream(image(t, "photo_640x480.jpg"), greedy12())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var b strings.Builder
	for {
		piece, ok, err := st.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		b.WriteString(piece)
	}
	if b.String() != want.text {
		t.Errorf("streamed %q, Rust %q", b.String(), want.text)
	}
	r, err := st.Result()
	if err != nil || !reflect.DeepEqual(r.Tokens, want.tokens) {
		t.Errorf("result %v %v", r, err)
	}
}

func longParams() *Params {
	p := DefaultParams()
	p.MaxNewTokens, p.MinNewTokens = 1500, 1500
	return &p
}

func TestCancelFromAnotherGoroutine(t *testing.T) {
	track(t)
	m, s := open(t)
	defer m.Close()
	defer s.Close()
	img := image(t, "photo_640x480.png")
	// A stream, cancelled from another goroutine once text arrives.
	st, err := s.Stream(img, longParams())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := st.Next(); !ok || err != nil {
		t.Fatal(ok, err)
	}
	// While the stream runs, the session is busy.
	_, err = s.Caption([]Image{img}, greedy12())
	var e *Error
	if !errors.As(err, &e) || e.Code != StatusBusy {
		t.Errorf("caption during a stream: %v", err)
	}
	go func() { _ = s.Cancel() }()
	n := 0
	for {
		_, ok, err := st.Next()
		if err != nil {
			if !errors.As(err, &e) || e.Code != StatusCancelled {
				t.Errorf("stream ended with %v", err)
			}
			break
		}
		if !ok {
			t.Error("stream finished instead of being cancelled")
			break
		}
		n++
	}
	st.Close()
	// A blocking caption, cancelled from another goroutine.
	done := make(chan error)
	go func() {
		_, err := s.Caption([]Image{img}, longParams())
		done <- err
	}()
	// Cancel only affects a call in progress, so repeat until the caption has started and ended.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(120 * time.Second)
	for {
		select {
		case err := <-done:
			if !errors.As(err, &e) || e.Code != StatusCancelled {
				t.Errorf("caption ended with %v", err)
			}
			return
		case <-tick.C:
			if err := s.Cancel(); err != nil {
				t.Fatal(err)
			}
		case <-timeout:
			t.Fatal("cancel did not stop the caption")
		}
	}
}

func TestErrors(t *testing.T) {
	track(t)
	_, err := Load("/no/such/model", nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != StatusIO || !strings.Contains(e.Msg, "/no/such/model") {
		t.Errorf("load: %v", err)
	}
	m, s := open(t)
	_, err = s.Caption([]Image{Encoded([]byte("junk"))}, nil)
	if !errors.As(err, &e) || e.Code != StatusImage || !strings.Contains(e.Msg, "images[0]") {
		t.Errorf("junk image: %v", err)
	}
	p := greedy12()
	p.Strategy = 9
	_, err = s.Caption([]Image{image(t, "photo_640x480.png")}, p)
	if !errors.As(err, &e) || e.Code != StatusInvalidArgument || !strings.Contains(e.Msg, "strategy 9") {
		t.Errorf("bad strategy: %v", err)
	}
	_, err = s.Caption(nil, nil)
	if !errors.As(err, &e) || e.Code != StatusInvalidArgument {
		t.Errorf("no images: %v", err)
	}
	s.Close()
	m.Close()
	if _, err := s.Caption(nil, nil); err != ErrClosed {
		t.Errorf("closed session: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}

func TestConcurrentSessionsAndFinalizers(t *testing.T) {
	track(t)
	want := readExpected(t)["photo_640x480.png"]
	m, err := Load(env(t, "SMOLCAP_MODEL_DIR"), nil)
	if err != nil {
		t.Fatal(err)
	}
	img := image(t, "photo_640x480.png")
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := m.NewSession()
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			for i := 0; i < 2; i++ {
				c, err := s.Caption([]Image{img}, greedy12())
				if err != nil {
					errs <- err
					return
				}
				if !reflect.DeepEqual(c[0].Tokens, want.tokens) {
					errs <- fmt.Errorf("goroutine caption %v", c[0].Tokens)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Objects dropped without Close are freed by their finalizers.
	before := LiveObjects()
	func() {
		s, err := m.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		_ = s
	}()
	m.Close()
	for i := 0; i < 50 && LiveObjects() >= before; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if LiveObjects() >= before {
		t.Errorf("finalizer did not free the session: %d live", LiveObjects())
	}
}

func TestAdaptersMergeAndMetrics(t *testing.T) {
	track(t)
	combo := []uint32{482, 340, 60, 87, 130, 262, 528, 450, 178, 236, 133, 247}
	seedStyle := []uint32{482, 39, 318, 133, 329, 238, 502, 84, 133, 460, 254, 25}
	dir := env(t, "SMOLCAP_MODEL_DIR")
	adapters := filepath.Join(dir, "..", "adapters")
	m, s := open(t)
	defer m.Close()
	defer s.Close()
	img := image(t, "photo_640x480.png")
	tokens := func(s *Session) []uint32 {
		c, err := s.Caption([]Image{img}, greedy12())
		if err != nil {
			t.Fatal(err)
		}
		return c[0].Tokens
	}
	base := tokens(s)
	a, err := m.LoadAdapter(filepath.Join(adapters, "text_r4_a8"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.LoadAdapter(filepath.Join(adapters, "text_r2_a3_b"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := a.Info(); err != nil || info.Rank != 4 || info.Alpha != 8 || info.NumLoRAModules != 14 {
		t.Errorf("info %+v %v", info, err)
	}
	var e *Error
	if err := s.SetAdapters([]*Adapter{a, b}, []float32{1, float32(math.NaN())}); !errors.As(err, &e) ||
		e.Code != StatusInvalidArgument || !strings.Contains(e.Msg, "scales[1]") {
		t.Errorf("NaN scale: %v", err)
	}
	if err := s.SetAdapters([]*Adapter{a, b}, []float32{1, 0.5}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	if got := tokens(s); !reflect.DeepEqual(got, combo) {
		t.Errorf("two adapters: %v", got)
	}
	if err := s.SetAdapters(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := tokens(s); !reflect.DeepEqual(got, base) {
		t.Errorf("cleared: %v", got)
	}
	if err := s.SetAdapters([]*Adapter{a}, nil); err != ErrClosed {
		t.Errorf("closed adapter: %v", err)
	}

	out := t.TempDir()
	r, err := MergeSave(dir, []AdapterSpec{{filepath.Join(adapters, "seed_style_r2_a5"), 1}}, out,
		&MergeOptions{Overwrite: true})
	if err != nil || r.MergedModules != 20 || r.Shards != 1 {
		t.Fatalf("merge %+v %v", r, err)
	}
	mm, err := Load(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	ms, err := mm.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	if got := tokens(ms); !reflect.DeepEqual(got, seedStyle) {
		t.Errorf("merged: %v", got)
	}
	if _, err := MergeSave(dir, nil, out, nil); !errors.As(err, &e) || e.Code != StatusInvalidArgument {
		t.Errorf("no adapters: %v", err)
	}

	sc, err := ScoreCaptions([]string{"a cat on a mat", "two dogs in a field"},
		[][]string{{"a cat on a mat"}, {"dogs play in the grass", "two dogs running"}}, SuiteCoco)
	if err != nil {
		t.Fatal(err)
	}
	if len(sc.Metrics) != 7 || sc.Metrics[0] != "BLEU-1" || sc.PerImage["BLEU-1"][0] < 0.999 ||
		len(sc.PerImage["CIDEr"]) != 2 || sc.Corpus["ROUGE-L"] <= 0 {
		t.Errorf("scores %+v", sc)
	}
	if _, err := ScoreCaptions([]string{"x"}, [][]string{{}}, SuiteSeed); !errors.As(err, &e) ||
		!strings.Contains(e.Msg, "no references") {
		t.Errorf("no references: %v", err)
	}
	if _, err := ScoreCaptions([]string{"x"}, [][]string{{"y"}}, Suite(5)); !errors.As(err, &e) ||
		!strings.Contains(e.Msg, "suite 5") {
		t.Errorf("bad suite: %v", err)
	}
}

func TestQuantizedModel(t *testing.T) {
	track(t)
	want := readExpected(t)
	_, err := Load(env(t, "SMOLCAP_MODEL_DIR"), &LoadOptions{Quantize: "q9"})
	var e *Error
	if !errors.As(err, &e) || e.Code != StatusInvalidArgument || !strings.Contains(e.Msg, "not a weight format") {
		t.Errorf("bad quantize: %v", err)
	}
	m, err := Load(env(t, "SMOLCAP_MODEL_DIR"), &LoadOptions{Quantize: "q8_0"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Caption([]Image{image(t, "photo_640x480.png")}, greedy12())
	if err != nil || !reflect.DeepEqual(c[0].Tokens, want["q8_0"].tokens) || c[0].Text != want["q8_0"].text {
		t.Errorf("q8_0: %v %v, Rust %v", c, err, want["q8_0"].tokens)
	}
	// llama.cpp's Q8_0 GGUF pair of the same model captions the same.
	dir := filepath.Join(filepath.Dir(env(t, "SMOLCAP_MODEL_DIR")), "gguf-llama-cpp")
	g, err := Load(filepath.Join(dir, "tiny-idefics3-q8_0.gguf"),
		&LoadOptions{Mmproj: filepath.Join(dir, "mmproj-tiny-idefics3-q8_0.gguf")})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	gs, err := g.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer gs.Close()
	c, err = gs.Caption([]Image{image(t, "photo_640x480.png")}, greedy12())
	if err != nil || !reflect.DeepEqual(c[0].Tokens, want["q8_0"].tokens) {
		t.Errorf("gguf: %v %v, Rust %v", c, err, want["q8_0"].tokens)
	}
}
