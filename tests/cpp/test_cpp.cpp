// Tests of bindings/cpp/smolcap.hpp on the tiny fixture: captions equal the Rust path, errors
// become smolcap::Error with status + message, exceptions thrown by callbacks are rethrown
// after the call (never crossing into Rust), streams, cancel from another thread, move-only
// RAII (no handle left alive).
//
// Usage: test_cpp MODEL_DIR IMAGES_DIR EXPECTED_FILE
#include <smolcap.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>
#include <type_traits>

#include <unistd.h>
#include <cmath>

namespace {

int passed = 0, failed = 0;

void check(bool ok, const std::string &what) {
    if (ok) {
        passed++;
    } else {
        failed++;
        std::cerr << "FAIL: " << what << "\n";
    }
}

std::string read_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

struct Expected {
    std::vector<uint32_t> tokens;
    std::string text;
};

std::map<std::string, Expected> read_expected(const std::string &path) {
    std::map<std::string, Expected> out;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) {
        std::vector<std::string> f;
        std::istringstream ls(line);
        std::string field;
        while (std::getline(ls, field, '\t')) f.push_back(field);
        if (f.size() != 4 || f[0] != "caption") continue;
        Expected e;
        std::istringstream ts(f[2]);
        uint32_t t;
        while (ts >> t) e.tokens.push_back(t);
        for (size_t i = 0; i + 1 < f[3].size(); i += 2)
            e.text.push_back(static_cast<char>(std::stoi(f[3].substr(i, 2), nullptr, 16)));
        out[f[1]] = e;
    }
    return out;
}

smolcap::GenerateParams greedy12() {
    smolcap::GenerateParams p;
    p.c.max_new_tokens = 12;
    return p;
}

template <class F>
smolcap_status status_of(F &&f) {
    try {
        f();
    } catch (const smolcap::Error &e) {
        return e.code();
    }
    return SMOLCAP_STATUS_OK;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 4) {
        std::cerr << "usage: test_cpp MODEL_DIR IMAGES_DIR EXPECTED_FILE\n";
        return 2;
    }
    const std::string dir = argv[1], images = argv[2];
    static_assert(!std::is_copy_constructible<smolcap::Model>::value, "move-only");
    static_assert(!std::is_copy_constructible<smolcap::Session>::value, "move-only");
    static_assert(std::is_nothrow_move_constructible<smolcap::Session>::value, "movable");
    try {
        auto expected = read_expected(argv[3]);
        check(smolcap::version() == smolcap_version(), "version");
        auto model = smolcap::Model::load(dir);
        auto info = model.info();
        check(info.model_type == "idefics3" && info.vocab_size == 600, "info");
        smolcap::Session session(model);

        // Every fixture image, the JPEG from memory included, equals the Rust path.
        const char *files[] = {"photo_640x480.png", "pano_400x60.png", "gray_120x90.png",
                               "photo_640x480.jpg"};
        std::vector<std::string> bytes;
        std::vector<smolcap::Image> ims;
        for (const char *f : files) bytes.push_back(read_file(images + "/" + f));
        for (const auto &b : bytes) ims.push_back(smolcap::Image::encoded(b.data(), b.size()));
        for (size_t i = 0; i < ims.size(); i++) {
            auto c = session.caption(ims[i], greedy12());
            const auto &want = expected.at(files[i]);
            check(c.tokens == want.tokens && c.text == want.text,
                  std::string(files[i]) + ": caption differs from the Rust path");
        }
        auto p3 = greedy12();
        p3.c.batch_size = 3;
        auto all = session.caption(ims, p3);
        check(all.size() == ims.size(), "batched count");
        for (size_t i = 0; i < all.size(); i++)
            check(all[i].tokens == expected.at(files[i]).tokens, "batched tokens");

        // Token callback; a lambda that throws: the exception comes back, the session survives.
        std::string streamed;
        auto c = session.caption({ims[0]}, greedy12(), [&](size_t, std::string_view piece) {
            streamed += piece;
            return true;
        });
        check(streamed == c.at(0).text, "callback text");
        bool caught = false;
        try {
            session.caption({ims[0]}, greedy12(), [](size_t, std::string_view) -> bool {
                throw std::logic_error("from the callback");
            });
        } catch (const std::logic_error &e) {
            caught = std::string(e.what()) == "from the callback";
        }
        check(caught, "callback exception rethrown");
        check(session.caption(ims[0], greedy12()).tokens == expected.at(files[0]).tokens,
              "session usable after a callback exception");

        // Errors carry status + message.
        auto bad = smolcap::Image::encoded("junk", 4);
        try {
            session.caption(bad, greedy12());
            check(false, "junk image accepted");
        } catch (const smolcap::Error &e) {
            check(e.code() == SMOLCAP_STATUS_IMAGE, "junk image status");
            check(std::string(e.what()).find("images[0]") != std::string::npos, e.what());
            check(std::string(e.code_name()) == "image error", e.code_name());
        }
        check(status_of([&] { smolcap::Model::load("/no/such/model"); }) == SMOLCAP_STATUS_IO,
              "missing model dir -> IO");

        // Quantized at load: the Rust path's tokens; a bad format is INVALID_ARGUMENT.
        smolcap::LoadOptions q8;
        q8.quantize = "q8_0";
        auto qmodel = smolcap::Model::load(dir, q8);
        smolcap::Session qsession(qmodel);
        auto qc = qsession.caption(ims[0], greedy12());
        check(qc.tokens == expected.at("q8_0").tokens && qc.text == expected.at("q8_0").text,
              "q8_0 caption differs from the Rust path");
        q8.quantize = "q9";
        check(status_of([&] { smolcap::Model::load(dir, q8); }) ==
                  SMOLCAP_STATUS_INVALID_ARGUMENT,
              "bad quantize");
        // llama.cpp's Q8_0 GGUF pair of the same model, its mmproj named: the same tokens.
        const std::string gdir = dir.substr(0, dir.rfind('/')) +
                                 "/gguf-llama-cpp/";
        smolcap::LoadOptions g;
        g.mmproj = gdir + "mmproj-tiny-idefics3-q8_0.gguf";
        auto gmodel = smolcap::Model::load(gdir + "tiny-idefics3-q8_0.gguf", g);
        smolcap::Session gsession(gmodel);
        check(gsession.caption(ims[0], greedy12()).tokens == expected.at("q8_0").tokens,
              "gguf caption differs from the Rust path");
        auto badp = greedy12();
        badp.c.strategy = 99;
        check(status_of([&] { session.caption(ims[0], badp); }) ==
                  SMOLCAP_STATUS_INVALID_ARGUMENT,
              "bad strategy");

        // Pull stream.
        auto st = session.stream(ims[3], greedy12());
        std::string text;
        while (auto piece = st.next()) text += *piece;
        check(text == expected.at("photo_640x480.jpg").text, "stream text");
        check(st.result().tokens == expected.at("photo_640x480.jpg").tokens, "stream tokens");

        // Score.
        auto nll = session.score(ims[0], "a photo of a cat");
        check(nll.tokens > 1 && nll.total > 0, "score");

        // LoRA adapters: two at once (peft's tokens), cleared, merged into a checkpoint.
        {
            const std::vector<uint32_t> combo{482, 340, 60, 87, 130, 262, 528, 450, 178, 236, 133, 247};
            const std::vector<uint32_t> seed_style{482, 39, 318, 133, 329, 238, 502, 84, 133, 460, 254, 25};
            const std::string adapters = dir + "/../adapters/";
            auto base_tokens = session.caption(ims[0], greedy12()).tokens;
            {
                auto a = smolcap::Adapter::load(model, adapters + "text_r4_a8");
                auto b = smolcap::Adapter::load(model, adapters + "text_r2_a3_b");
                auto ai = a.info();
                check(ai.rank == 4 && ai.alpha == 8.0 && ai.num_lora_modules == 14 &&
                          !ai.use_rslora && ai.dir.find("text_r4_a8") != std::string::npos,
                      "adapter info");
                check(status_of([&] { session.set_adapters({&a, &b}, {1.0f}); }) ==
                          SMOLCAP_STATUS_INVALID_ARGUMENT,
                      "scales size mismatch");
                check(status_of([&] { session.set_adapters({&a, &b}, {1.0f, NAN}); }) ==
                          SMOLCAP_STATUS_INVALID_ARGUMENT,
                      "NaN scale");
                session.set_adapters({&a, &b}, {1.0f, 0.5f});
            }  // the adapters are freed; the session keeps them
            check(session.caption(ims[0], greedy12()).tokens == combo, "two adapters");
            session.clear_adapters();
            check(session.caption(ims[0], greedy12()).tokens == base_tokens, "adapters cleared");
            check(status_of([&] { smolcap::Adapter::load(model, "/no/such/adapter"); }) ==
                      SMOLCAP_STATUS_IO,
                  "missing adapter -> IO");

            auto out = std::filesystem::temp_directory_path() /
                       ("smolcap-cpp-merge-" + std::to_string(::getpid()));
            smolcap::MergeOptions mo;
            mo.overwrite = true;
            auto rep = smolcap::merge_save(dir, {{adapters + "seed_style_r2_a5", 1.0f}},
                                           out.string(), mo);
            check(rep.merged_modules == 20 && rep.shards == 1 && rep.warnings == 0, "merge report");
            {
                auto merged = smolcap::Model::load(out.string());
                smolcap::Session ms(merged);
                check(ms.caption(ims[0], greedy12()).tokens == seed_style, "merged model tokens");
            }
            std::filesystem::remove_all(out);
        }

        // Caption metrics.
        {
            std::vector<std::string> cands{"a man riding a wave on a surfboard",
                                           "two dogs playing in the grass"};
            std::vector<std::vector<std::string>> refs{
                {"a surfer rides a wave", "a man surfing on a big wave"},
                {"two dogs play with a frisbee", "dogs running in a field"}};
            auto sc = smolcap::score_captions(cands, refs, smolcap::Suite::Coco);
            auto names = sc.metrics();
            check(sc.size() == 2 && names.size() == 7 && names.front() == "BLEU-1" &&
                      names.back() == "CIDEr",
                  "scores shape");
            double b1 = sc.corpus("BLEU-1");
            check(b1 > 0 && b1 <= 1 && sc.image(1, "ROUGE-L") > 0, "scores values");
            auto self = smolcap::score_captions({"a cat on a mat"}, {{"a cat on a mat"}});
            check(self.corpus("BLEU-1") == 1.0, "identical caption BLEU-1");
            check(status_of([&] { sc.corpus("SPICE"); }) == SMOLCAP_STATUS_INVALID_ARGUMENT,
                  "unknown metric");
            check(status_of([&] { smolcap::score_captions({"x"}, {{}}); }) ==
                      SMOLCAP_STATUS_INVALID_ARGUMENT,
                  "no references");
        }

        // Cancel a long caption from another thread.
        auto lp = greedy12();
        lp.c.max_new_tokens = 1500;
        lp.c.min_new_tokens = 1500;
        std::atomic<int> pieces{0};
        smolcap_status cancelled = SMOLCAP_STATUS_OK;
        std::thread worker([&] {
            cancelled = status_of([&] {
                session.caption({ims[0]}, lp, [&](size_t, std::string_view) {
                    pieces++;
                    return true;
                });
            });
        });
        while (pieces < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        session.cancel();
        worker.join();
        check(cancelled == SMOLCAP_STATUS_CANCELLED, "cancel from another thread");
        check(pieces < 1500, "cancelled early");

        // Move semantics: the moved-from session is empty; the new one works.
        smolcap::Session moved(std::move(session));
        check(session.get() == nullptr, "moved-from is empty");
        check(moved.caption(ims[1], greedy12()).tokens == expected.at(files[1]).tokens,
              "moved session works");
    } catch (const std::exception &e) {
        check(false, std::string("unexpected exception: ") + e.what());
    }
    check(smolcap_debug_live_objects() == 0, "handles left alive");
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
