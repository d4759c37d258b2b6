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
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>
#include <type_traits>

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
