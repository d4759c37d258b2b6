// XCTest tests for the Swift wrapper (NOT run by CI: no Swift toolchain there).
// Run with: SMOLCAP_MODEL_DIR=... SMOLCAP_IMAGES_DIR=... swift test
import Foundation
import XCTest

@testable import Smolcap

final class SmolcapTests: XCTestCase {
    func fixture() throws -> (Model, Session, Data) {
        let env = ProcessInfo.processInfo.environment
        guard let dir = env["SMOLCAP_MODEL_DIR"], let images = env["SMOLCAP_IMAGES_DIR"] else {
            throw XCTSkip("SMOLCAP_MODEL_DIR / SMOLCAP_IMAGES_DIR not set")
        }
        let model = try Model(path: dir)
        let session = try Session(model: model)
        let png = try Data(contentsOf: URL(fileURLWithPath: images + "/photo_640x480.png"))
        return (model, session, png)
    }

    func testCaptionMatchesTransformers() throws {
        let (model, session, png) = try fixture()
        XCTAssertEqual(try model.modelType(), "idefics3")
        var p = GenerateParams()
        p.c.max_new_tokens = 12
        let caps = try session.caption([.encoded(png)], params: p)
        XCTAssertEqual(caps[0].tokens, [482, 340, 60, 400, 599])
    }

    func testErrorsThrow() throws {
        let (_, session, _) = try fixture()
        XCTAssertThrowsError(try session.caption([.encoded(Data("junk".utf8))])) { error in
            XCTAssertEqual((error as? SmolcapError)?.code, SMOLCAP_STATUS_IMAGE)
        }
    }

    func testStreamEqualsCaption() async throws {
        let (_, session, png) = try fixture()
        var p = GenerateParams()
        p.c.max_new_tokens = 12
        let whole = try session.caption([.encoded(png)], params: p)[0].text
        var text = ""
        for try await piece in try session.stream(.encoded(png), params: p) {
            text += piece
        }
        XCTAssertEqual(text, whole)
    }

    func testCancelStream() async throws {
        let (_, session, png) = try fixture()
        var p = GenerateParams()
        p.c.max_new_tokens = 1500
        p.c.min_new_tokens = 1500
        let stream = try session.stream(.encoded(png), params: p)
        do {
            var n = 0
            for try await _ in stream {
                n += 1
                if n == 2 { session.cancel() }
            }
            XCTFail("stream was not cancelled")
        } catch let e as SmolcapError {
            XCTAssertEqual(e.code, SMOLCAP_STATUS_CANCELLED)
        }
    }
}
