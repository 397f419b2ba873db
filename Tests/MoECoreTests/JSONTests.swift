import Testing
@testable import MoECore

@Suite struct JSONTests {
  @Test func roundTripsNestedValues() throws {
    let text = #"{"a": [1, 2.5, -3e2, true, null], "b": {"c": "x\n\u00e9\ud83d\ude00"}, "d": []}"#
    let v = try JSONParser.parse(text, what: "t")
    #expect(v["a"]?.arrayValue?.count == 5)
    #expect(v["a"]?.arrayValue?[2].doubleValue == -300)
    #expect(v["b"]?["c"]?.stringValue == "x\né😀")
    let again = try JSONParser.parse(v.serialized(indent: 2), what: "t")
    #expect(again == v)
  }

  @Test(arguments: ["", "{", "[1,]", "{\"a\" 1}", "\"abc", "01x", "{} x", "[\"\\q\"]", "tru"])
  func rejectsMalformed(_ text: String) {
    #expect(throws: MoEError.self) { try JSONParser.parse(text, what: "t") }
  }

  @Test func rejectsDeepNesting() {
    let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
    #expect(throws: MoEError.self) { try JSONParser.parse(deep, what: "t") }
  }
}
