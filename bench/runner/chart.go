package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

var systemColors = map[string]color.RGBA{
	"strata":         {0x1f, 0x4e, 0x9c, 0xff},
	"strata-nocache": {0x7d, 0xa9, 0xe8, 0xff},
	"strata-snap10":  {0x2a, 0x9d, 0xa8, 0xff},
	"nbdkit":         {0xe0, 0x8a, 0x1e, 0xff},
	"qemu-nbd":       {0x4a, 0x9a, 0x3a, 0xff},
	"io_uring":       {0x99, 0x99, 0x99, 0xff},
	"fresh-file":     {0xc4, 0xc4, 0xc4, 0xff},
}

var (
	black     = color.RGBA{0x20, 0x20, 0x20, 0xff}
	gray      = color.RGBA{0x70, 0x70, 0x70, 0xff}
	gridColor = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	bandColor = color.RGBA{0xf5, 0xf7, 0xfa, 0xff}
)

const (
	chartW   = 1400
	plotX0   = 310 // left edge of the bars, unless the labels need more
	plotX1   = 1020
	barH     = 14
	rowPitch = 18
	groupGap = 16
	topH     = 96
)

// drawChart draws horizontal grouped bars: per job, one bar per system,
// its IOPS relative to nbdkit's (1.0: the median of the per-round ratios,
// as in the table), each labelled with the ratio and the raw medians. Bars
// beyond the scale (the io_uring and fresh-file ceilings) are cut, with
// their value written.
func (b *bench) drawChart(path string) error {
	type bar struct {
		sys   *system
		ratio float64
		sm    summary
	}
	type group struct {
		job  *job
		base string
		bars []bar
	}
	var groups []group
	maxUncut := 1.0
	for _, j := range b.jobs {
		base := ""
		for _, cand := range []string{"nbdkit", "strata"} {
			if _, ok := b.summarize(j.name, cand); ok {
				base = cand
				break
			}
		}
		if base == "" {
			for _, s := range b.systems {
				if _, ok := b.summarize(j.name, s.name); ok {
					base = s.name
					break
				}
			}
		}
		if base == "" {
			continue
		}
		g := group{job: j, base: base}
		for _, s := range b.systems {
			sm, ok := b.summarize(j.name, s.name)
			r, ok2 := b.ratio(j.name, s.name, base)
			if !ok || !ok2 {
				continue
			}
			g.bars = append(g.bars, bar{s, r.median, sm})
			if s.kind != kindUring && s.kind != kindFresh {
				maxUncut = max(maxUncut, r.median)
			}
		}
		groups = append(groups, g)
	}
	if len(groups) == 0 {
		return fmt.Errorf("no results to draw")
	}
	// Scale: up to the largest server's ratio, at most 3x; the ceiling's
	// bars may be cut.
	xmax := math.Min(3, math.Ceil(maxUncut*1.1*2)/2)
	xmax = math.Max(xmax, 1.5)
	step := 0.25
	if xmax > 2 {
		step = 0.5
	}
	// The job's name, then the system's, left of the bars (7 px a letter).
	sysLen := 0
	for _, s := range b.systems {
		sysLen = max(sysLen, len(s.name))
	}
	x0 := max(plotX0, 10+7*b.jobWidth()+16+7*sysLen+8)
	xOf := func(v float64) int { return x0 + int(math.Round(v/xmax*float64(plotX1-x0))) }

	h := topH + 48
	for _, g := range groups {
		h += len(g.bars)*rowPitch + groupGap
	}
	img := image.NewRGBA(image.Rect(0, 0, chartW, h))
	fill(img, img.Bounds(), color.White)

	// Title, machine and legend.
	title := "Strata vs peers: IOPS relative to nbdkit's file plugin (= 1.0; median of per-round ratios), fio nbd engine over Unix sockets"
	text(img, 12, 20, title, black)
	var subs []string
	for _, l := range b.machine {
		for _, p := range []string{"settings: ", "machine:  "} {
			if v, ok := strings.CutPrefix(l, p); ok {
				subs = append(subs, v)
			}
		}
	}
	sub := strings.Join(subs, "; ")
	text(img, 12, 38, sub, gray)
	x := 12
	for _, s := range b.systems {
		fill(img, image.Rect(x, 50, x+14, 62), systemColors[s.name])
		text(img, x+19, 61, s.name, black)
		x += 19 + 7*len(s.name) + 22
	}
	text(img, x+6, 61, "labels: ratio, IOPS, MB/s, p99 latency", gray)

	// Bands behind every other job, then the grid and scale.
	plotTop, plotBottom := topH, h-40
	by0 := plotTop
	for gi, g := range groups {
		gh := len(g.bars) * rowPitch
		if gi%2 == 0 {
			fill(img, image.Rect(0, by0-groupGap/2+1, chartW, by0+gh+groupGap/2-1), bandColor)
		}
		by0 += gh + groupGap
	}
	for v := 0.0; v <= xmax+1e-9; v += step {
		gx := xOf(v)
		c := gridColor
		if v == 1 {
			c = black
		}
		fill(img, image.Rect(gx, plotTop-6, gx+1, plotBottom), c)
		label := strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".") + "x"
		text(img, gx-3*len(label), plotTop-10, label, gray)
		text(img, gx-3*len(label), plotBottom+14, label, gray)
	}

	y := plotTop
	for gi, g := range groups {
		gh := len(g.bars) * rowPitch
		bg := color.RGBA{0xff, 0xff, 0xff, 0xff}
		if gi%2 == 0 {
			bg = bandColor
		}
		jobLabel := g.job.name
		text(img, 10, y+gh/2+4, jobLabel, black)
		if g.base != "nbdkit" {
			text(img, 10, y+gh/2+18, "(relative to "+g.base+")", gray)
		}
		for i, br := range g.bars {
			by := y + i*rowPitch
			text(img, x0-8-7*len(br.sys.name), by+11, br.sys.name, gray)
			end := xOf(math.Min(br.ratio, xmax))
			fill(img, image.Rect(x0, by, max(end, x0+1), by+barH), systemColors[br.sys.name])
			label := fmt.Sprintf("%.2fx  %s IOPS  %.0f MB/s  %s", br.ratio, fmtCount(br.sm.iops), br.sm.bw/1e6, fmtLatency(br.sm.p99))
			if br.ratio > xmax {
				// A break mark: the bar goes on beyond the scale.
				for k := range barH {
					img.Set(end-12+k/3, by+barH-1-k, color.White)
					img.Set(end-7+k/3, by+barH-1-k, color.White)
				}
				label = "cut: " + label
			}
			// On the group's background, over the grid lines.
			fill(img, image.Rect(end+3, by, end+9+7*len(label), by+barH), bg)
			text(img, end+6, by+11, label, black)
		}
		y += gh + groupGap
	}
	text(img, 12, h-8, "p99: completion latency. Cut bars run past the scale (the io_uring and fresh-file ceilings have no server and no socket).", gray)

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

// text draws s with its baseline at y.
func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
