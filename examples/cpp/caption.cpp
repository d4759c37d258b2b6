// Captions an image file with the C++ wrapper, streaming the text.
// Build: c++ -std=c++17 caption.cpp $(pkg-config --cflags --libs smolcap) -o caption_cpp
// Usage: caption_cpp MODEL_DIR_OR_REPO IMAGE [MAX_NEW_TOKENS]
#include <smolcap.hpp>

#include <fstream>
#include <iostream>
#include <iterator>

int main(int argc, char **argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR_OR_REPO IMAGE [MAX_NEW_TOKENS]\n";
        return 2;
    }
    std::ifstream f(argv[2], std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (!f && bytes.empty()) {
        std::cerr << "cannot read " << argv[2] << "\n";
        return 1;
    }
    try {
        auto model = smolcap::Model::load(argv[1]);
        smolcap::Session session(model);
        smolcap::GenerateParams params;
        if (argc > 3) params.c.max_new_tokens = static_cast<uint32_t>(std::stoul(argv[3]));
        auto stream = session.stream(smolcap::Image::encoded(bytes.data(), bytes.size()), params);
        while (auto piece = stream.next()) std::cout << *piece << std::flush;
        std::cout << "\n(" << stream.result().tokens.size() << " tokens)\n";
    } catch (const smolcap::Error &e) {
        std::cerr << "error (" << e.code_name() << "): " << e.what() << "\n";
        return 1;
    }
    return 0;
}
