import Foundation
import Testing

@testable import FVDCommandLine

#if canImport(FoundationXML)
import FoundationXML
#endif

/// Parses XML and keeps, for the checks, every element name and the text of every `<text>` element.
private final class XMLSummary: NSObject, XMLParserDelegate {
    var elements: [String] = []
    var texts: [String] = []
    private var inText = false
    private var current = ""

    /// Parses `document`; `nil` when it is not well-formed.
    static func parse(_ document: String) -> XMLSummary? {
        let summary = XMLSummary()
        let parser = XMLParser(data: Data(document.utf8))
        parser.delegate = summary
        return parser.parse() ? summary : nil
    }

    func parser(
        _ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
        attributes: [String: String] = [:]
    ) {
        elements.append(name)
        if name == "text" { (inText, current) = (true, "") }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if inText { current += string }
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" { (inText, texts) = (false, texts + [current]) }
    }

    func count(_ name: String) -> Int { elements.filter { $0 == name }.count }
}

/// Bench-like data: four collectives over 8K…64M and a dashed memcpy bound.
private func realistic() -> [PlotSeries] {
    let sizes = (13...26).map { 1 << $0 }
    let ops = ["all_reduce", "all_gather", "reduce_scatter", "all_to_all_4d"]
    var series = ops.enumerated().map { i, op in
        PlotSeries(label: op, points: sizes.enumerated().map { k, b in
            PlotPoint(bytes: b, gigabytesPerSecond: 0.5 + Double(k) * (2.5 - 0.4 * Double(i)))
        })
    }
    series.append(PlotSeries(label: "memcpy", points: sizes.map { PlotPoint(bytes: $0, gigabytesPerSecond: 40) }, dashed: true))
    return series
}

/// The edge cases that must still give well-formed output.
private let edgeCases: [(String, [PlotSeries])] = [
    ("no series", []),
    ("one point", [PlotSeries(label: "a", points: [PlotPoint(bytes: 8192, gigabytesPerSecond: 3)])]),
    ("empty series", [PlotSeries(label: "a", points: [])]),
    ("all zero", [PlotSeries(label: "a", points: [PlotPoint(bytes: 1024, gigabytesPerSecond: 0), PlotPoint(bytes: 2048, gigabytesPerSecond: 0)])]),
    ("single x", [PlotSeries(label: "a", points: [PlotPoint(bytes: 1, gigabytesPerSecond: 1)]), PlotSeries(label: "b", points: [PlotPoint(bytes: 1, gigabytesPerSecond: 2)])]),
    ("non-finite", [PlotSeries(label: "a", points: [
        PlotPoint(bytes: 1024, gigabytesPerSecond: .nan), PlotPoint(bytes: 2048, gigabytesPerSecond: .infinity),
        PlotPoint(bytes: 4096, gigabytesPerSecond: -.infinity), PlotPoint(bytes: 8192, gigabytesPerSecond: 1),
    ])]),
    ("only NaN", [PlotSeries(label: "a", points: [PlotPoint(bytes: 1024, gigabytesPerSecond: .nan)])]),
    ("extremes", [PlotSeries(label: "a", points: [PlotPoint(bytes: 0, gigabytesPerSecond: 1), PlotPoint(bytes: 1, gigabytesPerSecond: 1e-9),
        PlotPoint(bytes: Int.max, gigabytesPerSecond: .greatestFiniteMagnitude), PlotPoint(bytes: 4, gigabytesPerSecond: -5)])]),
    ("special characters", [PlotSeries(label: "a & b <c> \"d\" 'e'", points: [PlotPoint(bytes: 64, gigabytesPerSecond: 1)])]),
    ("many series", (0..<12).map { PlotSeries(label: "s\($0)", points: [PlotPoint(bytes: 1 << 20, gigabytesPerSecond: Double($0))]) }),
]

@Suite("BenchPlot")
struct BenchPlotTests {
    @Test("realistic data gives well-formed SVG with a polyline per series and every label in the legend")
    func realisticSVG() throws {
        let svg = BenchPlot.svg(title: "fvd bench", subtitle: "world size 8, float32", series: realistic())
        let summary = try #require(XMLSummary.parse(svg))
        #expect(summary.elements.first == "svg")
        #expect(summary.count("polyline") == 5)
        #expect(summary.count("circle") == 5 * 14 + 5)
        for s in realistic() { #expect(summary.texts.contains(s.label)) }
        for tick in ["16K", "64K", "1M", "16M", "64M"] { #expect(summary.texts.contains(tick)) }
        for axis in ["message size per rank (bytes)", "bus bandwidth (GB/s)", "0", "40"] { #expect(summary.texts.contains(axis)) }
        #expect(svg.contains("stroke-dasharray"))
    }

    @Test("every edge case gives well-formed SVG and HTML", arguments: edgeCases.map(\.0))
    func edgeCase(_ name: String) throws {
        let series = try #require(edgeCases.first { $0.0 == name }).1
        let svg = BenchPlot.svg(title: "t & <u>", subtitle: "s 'v'", series: series)
        let summary = try #require(XMLSummary.parse(svg), "\(name): \(svg)")
        let drawable = series.filter { $0.points.filter { $0.bytes > 0 && $0.gigabytesPerSecond.isFinite }.count >= 2 }
        #expect(summary.count("polyline") == drawable.count)
        for s in series { #expect(summary.texts.contains(s.label)) }
        #expect(!svg.contains("nan") && !svg.contains("inf"))
        #expect(XMLSummary.parse(BenchPlot.html(title: "t & <u>", subtitle: "s", series: series)) != nil)
    }

    @Test("labels with XML special characters are escaped and round-trip")
    func escaping() throws {
        let label = "a & b <c> \"d\" 'e' \u{1}"
        let svg = BenchPlot.svg(title: "<&>", subtitle: "'\"", series: [PlotSeries(label: label, points: [])])
        let summary = try #require(XMLSummary.parse(svg))
        #expect(summary.texts.contains("a & b <c> \"d\" 'e' "))
        #expect(summary.texts.contains("<&>"))
        #expect(summary.texts.contains("'\""))
        #expect(!svg.contains("<c>"))
    }

    @Test("the HTML page holds the same SVG and the title, with no scripts or external resources")
    func htmlPage() throws {
        let html = BenchPlot.html(title: "fvd bench", subtitle: "sub", series: realistic())
        let summary = try #require(XMLSummary.parse(html))
        #expect(summary.elements.prefix(2) == ["html", "head"])
        #expect(summary.count("svg") == 1)
        #expect(summary.count("polyline") == 5)
        #expect(html.contains(BenchPlot.svg(title: "fvd bench", subtitle: "sub", series: realistic()).split(separator: "\n", maxSplits: 1)[1]))
        #expect(!html.contains("<script") && !html.contains("href=") && !html.contains("src="))
    }

    @Test("the output is deterministic with limited decimals")
    func deterministic() {
        let a = BenchPlot.svg(title: "t", subtitle: "s", series: realistic())
        #expect(a == BenchPlot.svg(title: "t", subtitle: "s", series: realistic()))
        let longDecimals = a.split(whereSeparator: { !"0123456789.".contains($0) }).filter {
            ($0.split(separator: ".").dropFirst().first?.count ?? 0) > 2
        }
        #expect(longDecimals.isEmpty)
    }

    @Test("colours come from the palette and cycle")
    func colours() {
        let series = (0..<(BenchPlot.palette.count + 1)).map { PlotSeries(label: "s\($0)", points: []) }
        let svg = BenchPlot.svg(title: "t", subtitle: "s", series: series)
        for c in BenchPlot.palette { #expect(svg.contains("stroke=\"\(c)\"")) }
        #expect(svg.components(separatedBy: "stroke=\"\(BenchPlot.palette[0])\"").count - 1 == 4)
    }
}
