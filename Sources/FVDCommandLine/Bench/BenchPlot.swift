import Foundation

/// One line of the plot: a labelled series of (message size, bus bandwidth) points.
struct PlotSeries: Sendable, Equatable {
    /// The legend text, e.g. `all_reduce`.
    var label: String
    /// The measurements, in ascending `bytes`.
    var points: [PlotPoint]
    /// Draws the line dashed, e.g. for the in-place form of an operation.
    var dashed: Bool = false
    /// The palette entry to draw with; `nil` takes the series' position (so a dashed
    /// series can share its solid counterpart's colour).
    var colorIndex: Int? = nil
}

/// One measurement: the bus bandwidth at one message size.
struct PlotPoint: Sendable, Equatable {
    var bytes: Int
    var gigabytesPerSecond: Double
}

/// Renders `fvd bench` results as a bandwidth-vs-size chart, as standalone SVG or HTML.
///
/// The x axis is the message size on a log2 scale, the y axis the bus bandwidth, linear from 0.
/// Points with a non-finite bandwidth or a size below one byte are skipped. The output depends only
/// on the input, and every label is escaped, so the documents are always well-formed XML.
enum BenchPlot {
    /// Okabe–Ito colours (colour-blind friendly, yellow left out), cycled over the series.
    static let palette = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000"]

    /// A standalone SVG document of the chart.
    ///
    /// `ratios`, when given, is a second panel below, on the same x axis: each series'
    /// value there is a ratio (e.g. a run's time over the first run's), with a line at 1.
    static func svg(title: String, subtitle: String, series: [PlotSeries], ratios: Ratios? = nil) -> String {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + chart(title: title, subtitle: subtitle, series: series, ratios: ratios)
    }

    /// The lower panel of a comparison: its series (values are ratios) and the y axis' title.
    struct Ratios {
        var series: [PlotSeries]
        var title: String
    }

    /// An XHTML-compatible page with the title and the chart as inline SVG; no scripts, no external files.
    static func html(title: String, subtitle: String, series: [PlotSeries], ratios: Ratios? = nil) -> String {
        """
        <!DOCTYPE html>
        <html xmlns="http://www.w3.org/1999/xhtml" lang="en">
        <head><meta charset="utf-8"/><title>\(escape(title))</title>
        <style>body { font-family: sans-serif; margin: 24px; color: #222; }</style></head>
        <body>
        \(chart(title: title, subtitle: subtitle, series: series, ratios: ratios))</body>
        </html>

        """
    }

    /// Geometry of one chart: where the plot area lies and which data ranges it spans.
    private struct Frame {
        var left: Double, top = 64.0, width = 640.0, height = 360.0
        /// The y axis' title.
        var yTitle = "bus bandwidth (GB/s)"
        /// The x range as log2 exponents of bytes.
        var xMin: Int, xMax: Int
        var yMax: Double, yStep: Double
        var right: Double { left + width }
        var bottom: Double { top + height }
        /// Keeps the first and last markers off the frame.
        var inset: Double { 12 }
        func x(_ log2Bytes: Double) -> Double {
            left + inset + (log2Bytes - Double(xMin)) / Double(xMax - xMin) * (width - 2 * inset)
        }
        func y(_ value: Double) -> Double { bottom - min(max(value, 0), yMax) / yMax * height }
    }

    /// The `<svg>` element: title, axes with grid, one line per series and the legend on the
    /// right; then the ratio panel, if any, below on the same x range and left edge.
    private static func chart(title: String, subtitle: String, series: [PlotSeries], ratios: Ratios? = nil) -> String {
        let data = series.map(plotted)
        let ratioData = ratios.map { $0.series.map(plotted) } ?? []
        var f = frame(for: data.flatMap { $0 }, xFrom: (data + ratioData).flatMap { $0 })
        var lower = ratios.map { ratios in
            var lower = frame(for: ratioData.flatMap { $0 }, xFrom: (data + ratioData).flatMap { $0 }, top: f.bottom + 64, height: 200, atLeast: 1)
            lower.yTitle = ratios.title
            return lower
        }
        if var panel = lower {
            // Both panels start at the wider tick labels' edge.
            (f.left, panel.left) = (max(f.left, panel.left), max(f.left, panel.left))
            lower = panel
        }
        let legendWidth = 60 + 7.8 * Double(series.map(\.label.count).max() ?? 0)
        let width = max(f.right + 24 + legendWidth, 24 + 9.5 * Double(title.count), 24 + 6.8 * Double(subtitle.count))
        let height = max((lower ?? f).bottom + 56, f.top + 24 + 20 * Double(series.count))
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(n(width))" height="\(n(height))" \
            viewBox="0 0 \(n(width)) \(n(height))" font-family="Helvetica, Arial, sans-serif">
            <title>\(escape(title))</title>
            <rect width="100%" height="100%" fill="#ffffff"/>
            <text x="\(n(f.left))" y="26" font-size="17" font-weight="bold" fill="#222">\(escape(title))</text>
            <text x="\(n(f.left))" y="46" font-size="12" fill="#555">\(escape(subtitle))</text>

            """
        out += axes(f)
        for (i, points) in data.enumerated() { out += line(points, series[i], color(series[i].colorIndex ?? i), f) }
        out += legend(series, x: f.right + 24, y: f.top + 6)
        if let ratios, let lower {
            out += axes(lower)
            let one = n(lower.y(1))
            out += "<line x1=\"\(n(lower.left))\" y1=\"\(one)\" x2=\"\(n(lower.right))\" y2=\"\(one)\" stroke=\"#888\" stroke-dasharray=\"2 3\"/>\n"
            for (i, points) in ratioData.enumerated() {
                out += line(points, ratios.series[i], color(ratios.series[i].colorIndex ?? i), lower)
            }
        }
        return out + "</svg>\n"
    }

    /// The points a chart draws: a size of at least one byte and a finite value.
    private static func plotted(_ series: PlotSeries) -> [PlotPoint] {
        series.points.filter { $0.bytes > 0 && $0.gigabytesPerSecond.isFinite }
    }

    /// Chooses the ranges: whole powers of two around the sizes of `xFrom` (default the
    /// points themselves), and 0 to a nice bound above the largest value or `atLeast`
    /// (1 for a panel of ratios, so that it shows the line at 1).
    private static func frame(
        for points: [PlotPoint], xFrom: [PlotPoint]? = nil, top: Double = 64, height: Double = 360, atLeast: Double = 0
    ) -> Frame {
        let exponents = (xFrom ?? points).map { log2(Double($0.bytes)) }
        var xMin = Int((exponents.min() ?? 13).rounded(.down)), xMax = Int((exponents.max() ?? 26).rounded(.up))
        if xMax == xMin { (xMin, xMax) = (max(xMin - 1, 0), max(xMin - 1, 0) + 2) }
        let largest = min(max(points.map(\.gigabytesPerSecond).max() ?? 0, atLeast), 1e12)
        let target = largest > 0 ? largest * 1.04 : 1
        let step = niceStep(target / 5)
        let yMax = max((target / step).rounded(.up), 1) * step
        let longestTick = stride(from: 0, through: yMax, by: step).map { tickText($0, step).count }.max() ?? 1
        return Frame(left: 44 + 6.6 * Double(longestTick), top: top, height: height, xMin: xMin, xMax: xMax, yMax: yMax, yStep: step)
    }

    /// The smallest of 1, 2, 2.5, 5 × 10ⁿ that is at least `raw`.
    private static func niceStep(_ raw: Double) -> Double {
        let magnitude = pow(10, (log10(raw)).rounded(.down))
        return [1, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw * (1 - 1e-9) } ?? 10 * magnitude
    }

    /// Gridlines, tick labels, the plot frame and both axis titles.
    private static func axes(_ f: Frame) -> String {
        var out = "<g font-size=\"11\" fill=\"#444\">\n"
        for v in stride(from: 0, through: f.yMax * (1 + 1e-9), by: f.yStep) {
            let y = n(f.y(v))
            out += "<line x1=\"\(n(f.left))\" y1=\"\(y)\" x2=\"\(n(f.right))\" y2=\"\(y)\" stroke=\"#ddd\"/>\n"
            out += "<text x=\"\(n(f.left - 6))\" y=\"\(y)\" dy=\"4\" text-anchor=\"end\">\(tickText(v, f.yStep))</text>\n"
        }
        let every = labelStride(f)
        for e in f.xMin...f.xMax {
            let x = n(f.x(Double(e))), labelled = e % every == 0
            let grid = labelled ? "#ddd" : "#f0f0f0"
            out += "<line x1=\"\(x)\" y1=\"\(n(f.top))\" x2=\"\(x)\" y2=\"\(n(f.bottom))\" stroke=\"\(grid)\"/>\n"
            if labelled {
                out += "<text x=\"\(x)\" y=\"\(n(f.bottom + 18))\" text-anchor=\"middle\">\(sizeText(e))</text>\n"
            }
        }
        let midY = n(f.top + f.height / 2)
        return out + """
            <rect x="\(n(f.left))" y="\(n(f.top))" width="\(n(f.width))" height="\(n(f.height))" fill="none" stroke="#888"/>
            <text x="\(n(f.left + f.width / 2))" y="\(n(f.bottom + 40))" font-size="13" fill="#222" \
            text-anchor="middle">message size per rank (bytes)</text>
            <text x="16" y="\(midY)" transform="rotate(-90 16 \(midY))" font-size="13" fill="#222" \
            text-anchor="middle">\(escape(f.yTitle))</text>
            </g>

            """
    }

    /// Labels every `k`-th power of two, with `k` the smallest that leaves room between labels.
    private static func labelStride(_ f: Frame) -> Int {
        let widest = (f.xMin...f.xMax).map { sizeText($0).count }.max() ?? 1
        let most = max(Int((f.width - 2 * f.inset) / (6.6 * Double(widest) + 12)) + 1, 2)
        var every = 1
        while (f.xMax - f.xMin) / every + 1 > most { every += 1 }
        return every
    }

    /// One series: a polyline through its points (two or more) and a circle on each.
    private static func line(_ points: [PlotPoint], _ s: PlotSeries, _ color: String, _ f: Frame) -> String {
        let coordinates = points.map { (n(f.x(log2(Double($0.bytes)))), n(f.y($0.gigabytesPerSecond))) }
        var out = "<g stroke=\"\(color)\" fill=\"\(color)\"><title>\(escape(s.label))</title>\n"
        if coordinates.count >= 2 {
            let list = coordinates.map { "\($0.0),\($0.1)" }.joined(separator: " ")
            out += "<polyline points=\"\(list)\" fill=\"none\" stroke-width=\"2\"\(dash(s)) stroke-linejoin=\"round\"/>\n"
        }
        for (x, y) in coordinates { out += "<circle cx=\"\(x)\" cy=\"\(y)\" r=\"2.5\"/>\n" }
        return out + "</g>\n"
    }

    /// The legend: one row per series, a short line in its colour and dash, a marker and the label.
    private static func legend(_ series: [PlotSeries], x: Double, y: Double) -> String {
        var out = "<g font-size=\"12\" fill=\"#222\">\n"
        for (i, s) in series.enumerated() {
            let rowY = y + 20 * Double(i), c = color(series[i].colorIndex ?? i)
            out += """
                <line x1="\(n(x))" y1="\(n(rowY))" x2="\(n(x + 28))" y2="\(n(rowY))" stroke="\(c)" stroke-width="2"\(dash(s))/>
                <circle cx="\(n(x + 14))" cy="\(n(rowY))" r="2.5" fill="\(c)"/>
                <text x="\(n(x + 36))" y="\(n(rowY))" dy="4">\(escape(s.label))</text>

                """
        }
        return out + "</g>\n"
    }

    /// The colour of the `index`-th series.
    private static func color(_ index: Int) -> String { palette[index % palette.count] }

    /// The dash attribute of dashed series, else nothing.
    private static func dash(_ s: PlotSeries) -> String { s.dashed ? " stroke-dasharray=\"6 4\"" : "" }

    /// A y tick value with as many decimals as the step needs: `0`, `2.5`, `0.05`.
    private static func tickText(_ value: Double, _ step: Double) -> String {
        let decimals = min(max(Int((-log10(step)).rounded(.up)) + 1, 0), 6)
        var text = String(format: "%.\(decimals)f", value)
        if text.contains(".") { while text.hasSuffix("0") { text.removeLast() } }
        return text.hasSuffix(".") ? String(text.dropLast()) : text
    }

    /// `2^exponent` bytes in powers of 1024: `512`, `8K`, `64M`, `2G`.
    private static func sizeText(_ exponent: Int) -> String {
        let units = [(30, "G"), (20, "M"), (10, "K")]
        let (shift, unit) = units.first { exponent >= $0.0 } ?? (0, "")
        return "\(1 << (exponent - shift))\(unit)"
    }

    /// A coordinate with at most one decimal.
    private static func n(_ v: Double) -> String {
        let text = String(format: "%.1f", v)
        return text.hasSuffix(".0") ? String(text.dropLast(2)) : text
    }

    /// Text escaped for XML content and attributes; characters XML 1.0 forbids are dropped.
    static func escape(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r", "\u{20}"..."\u{D7FF}", "\u{E000}"..."\u{FFFD}", "\u{10000}"..."\u{10FFFF}":
                out.unicodeScalars.append(scalar)
            default: continue
            }
        }
        return out
    }
}
