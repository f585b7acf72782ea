// Command publisher publishes pre-encoded Ogg Opus clips as LiveKit microphone tracks,
// looped, at real-time pace, without encoding anything: the capacity benchmark's load
// generator. It reads a JSON plan on stdin, prints one JSON line per published track
// ({"track": i, "start_unix_ns": ...}: when the clip's first packet was sent), then
// {"ready": true}, and at the end {"cpu_s": ..., "wall_s": ..., "tracks": ...}. It stops
// when stdin closes, on SIGTERM, or after the plan's duration_s. With
// PUBLISHER_CPUPROFILE=path it writes a Go CPU profile there (where its own CPU goes).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

const frameDuration = 20 * time.Millisecond

type trackPlan struct {
	Token string `json:"token"`
	Clip  string `json:"clip"`
	Name  string `json:"name"`
	// Offset is the clip packet the track starts at, so tracks of one clip differ.
	Offset int `json:"offset_packets"`
}

type plan struct {
	URL       string      `json:"url"`
	Tracks    []trackPlan `json:"tracks"`
	DurationS float64     `json:"duration_s"`
}

// readOpusPackets splits an Ogg Opus file into its Opus packets (header packets dropped).
func readOpusPackets(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var packets [][]byte
	var partial []byte
	for pos := 0; pos < len(data); {
		if len(data)-pos < 27 || string(data[pos:pos+4]) != "OggS" {
			return nil, fmt.Errorf("%s: not an Ogg page at byte %d", path, pos)
		}
		segments := int(data[pos+26])
		table := data[pos+27 : pos+27+segments]
		body := pos + 27 + segments
		for _, lacing := range table {
			partial = append(partial, data[body:body+int(lacing)]...)
			body += int(lacing)
			if lacing < 255 {
				packets = append(packets, partial)
				partial = nil
			}
		}
		pos = body
	}
	if len(packets) < 3 {
		return nil, fmt.Errorf("%s: no Opus audio", path)
	}
	return packets[2:], nil // OpusHead, OpusTags
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "publisher:", err)
		os.Exit(1)
	}
}

func run() error {
	var p plan
	if err := json.NewDecoder(os.Stdin).Decode(&p); err != nil {
		return fmt.Errorf("reading the plan from stdin: %w", err)
	}
	clips := map[string][][]byte{}
	for _, t := range p.Tracks {
		if _, ok := clips[t.Clip]; !ok {
			packets, err := readOpusPackets(t.Clip)
			if err != nil {
				return err
			}
			clips[t.Clip] = packets
		}
	}
	if path := os.Getenv("PUBLISHER_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	var rooms []*lksdk.Room
	defer func() {
		for _, r := range rooms {
			r.Disconnect()
		}
	}()
	var out sync.Mutex
	emit := func(v any) {
		out.Lock()
		defer out.Unlock()
		line, _ := json.Marshal(v)
		fmt.Println(string(line))
	}
	for i, t := range p.Tracks {
		room, err := lksdk.ConnectToRoomWithToken(p.URL, t.Token, &lksdk.RoomCallback{},
			lksdk.WithAutoSubscribe(false))
		if err != nil {
			return fmt.Errorf("track %d: connecting: %w", i, err)
		}
		rooms = append(rooms, room)
		track, err := lksdk.NewLocalSampleTrack(webrtc.RTPCodecCapability{
			MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
		})
		if err != nil {
			return err
		}
		publication, err := room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
			Name: t.Name, Source: livekit.TrackSource_MICROPHONE,
		})
		if err != nil {
			return fmt.Errorf("track %d: publishing: %w", i, err)
		}
		go write(track, clips[t.Clip], t.Offset, i, publication.SID(), emit)
	}
	emit(map[string]any{"ready": true})

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	stdin := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stdin) }()
	var limit <-chan time.Time
	if p.DurationS > 0 {
		limit = time.After(time.Duration(p.DurationS * float64(time.Second)))
	}
	select {
	case <-stop:
	case <-stdin:
	case <-limit:
	}
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
	emit(map[string]any{
		"cpu_s": cpu.Seconds(), "wall_s": time.Since(start).Seconds(), "tracks": len(p.Tracks),
	})
	return nil
}

// write sends the clip's packets one per 20 ms against an absolute schedule (no drift),
// looping from packet `offset`, and reports when the first one went out.
func write(
	track *lksdk.LocalSampleTrack, packets [][]byte, offset, index int, sid string, emit func(any),
) {
	t0 := time.Now()
	emit(map[string]any{
		"track": index, "sid": sid, "start_unix_ns": t0.UnixNano(), "packets": len(packets),
	})
	for n := 0; ; n++ {
		sample := media.Sample{Data: packets[(offset+n)%len(packets)], Duration: frameDuration}
		if err := track.WriteSample(sample, nil); err != nil {
			if errors.Is(err, io.ErrClosedPipe) {
				return
			}
		}
		time.Sleep(time.Until(t0.Add(time.Duration(n+1) * frameDuration)))
	}
}
