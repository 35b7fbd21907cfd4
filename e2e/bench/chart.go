package bench

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"os"
)

// Chart geometry.
const (
	chartW      = 1100
	chartH      = 600
	chartLeft   = 80
	chartRight  = 250
	chartTop    = 50
	chartBottom = 60
)

var (
	colWhite = color.RGBA{255, 255, 255, 255}
	colBlack = color.RGBA{30, 30, 30, 255}
	colGrid  = color.RGBA{225, 225, 225, 255}
	palette  = []color.RGBA{
		{0, 114, 178, 255},   // blue: ipledger
		{213, 94, 0, 255},    // vermillion
		{0, 158, 115, 255},   // green
		{204, 121, 167, 255}, // purple
		{230, 159, 0, 255},   // orange
		{86, 180, 233, 255},  // sky
	}
)

// WriteChartFile writes the report's chart as a PNG file.
func WriteChartFile(path string, rep Report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WriteChart(f, rep); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteChart draws addresses held (solid) and in use by pods (dashed) over simulated time, one
// pair of lines per system, with axes and a legend, as a PNG.
func WriteChart(w io.Writer, rep Report) error {
	if len(rep.Systems) == 0 {
		return errors.New("bench: chart: the report has no system with a time series")
	}
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), &image.Uniform{colWhite}, image.Point{}, draw.Src)
	maxT, maxY := 1.0, 1.0
	for _, s := range rep.Systems {
		for _, p := range s.Series {
			maxT = math.Max(maxT, p.T)
			maxY = math.Max(maxY, float64(max(p.Held, p.InUse)))
		}
	}
	yStep := niceStep(maxY, 6)
	maxY = math.Ceil(maxY*1.05/yStep) * yStep
	xStep := niceStep(maxT, 8)
	pw, ph := chartW-chartLeft-chartRight, chartH-chartTop-chartBottom
	px := func(t float64) int { return chartLeft + int(math.Round(t/maxT*float64(pw))) }
	py := func(v float64) int { return chartTop + ph - int(math.Round(v/maxY*float64(ph))) }

	// Grid, ticks and labels.
	for v := 0.0; v <= maxY+yStep/2; v += yStep {
		y := py(v)
		line(img, chartLeft, y, chartLeft+pw, y, colGrid, 1, 0)
		lbl := fmt.Sprintf("%.0f", v)
		drawText(img, chartLeft-8-textWidth(lbl, 2), y-7, lbl, colBlack, 2)
	}
	for t := 0.0; t <= maxT+xStep/2; t += xStep {
		x := px(t)
		if x > chartLeft+pw {
			break
		}
		line(img, x, chartTop, x, chartTop+ph, colGrid, 1, 0)
		lbl := fmt.Sprintf("%.0f", t)
		drawText(img, x-textWidth(lbl, 2)/2, chartTop+ph+8, lbl, colBlack, 2)
	}
	line(img, chartLeft, chartTop, chartLeft, chartTop+ph, colBlack, 2, 0)
	line(img, chartLeft, chartTop+ph, chartLeft+pw, chartTop+ph, colBlack, 2, 0)
	xl := "simulated seconds"
	drawText(img, chartLeft+pw/2-textWidth(xl, 2)/2, chartH-24, xl, colBlack, 2)
	title := fmt.Sprintf("%s: addresses held (solid) vs in use by pods (dashed)", rep.Trace)
	drawText(img, chartLeft, 14, title, colBlack, 2)

	// Series.
	for i, s := range rep.Systems {
		c := palette[i%len(palette)]
		for k := 1; k < len(s.Series); k++ {
			a, b := s.Series[k-1], s.Series[k]
			line(img, px(a.T), py(float64(a.Held)), px(b.T), py(float64(b.Held)), c, 3, 0)
			line(img, px(a.T), py(float64(a.InUse)), px(b.T), py(float64(b.InUse)), c, 2, 8)
		}
		// Legend.
		lx, ly := chartLeft+pw+20, chartTop+10+i*46
		line(img, lx, ly+4, lx+30, ly+4, c, 3, 0)
		drawText(img, lx+38, ly-3, s.Name, colBlack, 2)
		line(img, lx, ly+26, lx+30, ly+26, c, 2, 8)
		drawText(img, lx+38, ly+20, "in use", colBlack, 2)
	}
	return png.Encode(w, img)
}

// niceStep is a 1/2/5 x 10^k step giving about n intervals over span.
func niceStep(span float64, n int) float64 {
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// line draws a line of the given thickness; dash > 0 draws dash-pixel dashes.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color, thick, dash int) {
	dx, dy := x1-x0, y1-y0
	steps := max(abs(dx), abs(dy), 1)
	for i := 0; i <= steps; i++ {
		if dash > 0 && (i/dash)%2 == 1 {
			continue
		}
		x := x0 + int(math.Round(float64(dx*i)/float64(steps)))
		y := y0 + int(math.Round(float64(dy*i)/float64(steps)))
		for ox := -(thick / 2); ox <= (thick-1)/2; ox++ {
			for oy := -(thick / 2); oy <= (thick-1)/2; oy++ {
				img.Set(x+ox, y+oy, c)
			}
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
