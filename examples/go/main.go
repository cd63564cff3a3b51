// Command go-client calls ImageService.Generate over gRPC with the generated Go stubs
// (aigne.dev/hub/gen/go/aigne/hub/v1): two images as URLs, two as bytes, then a bad
// request (n=11) whose google.rpc.Status details it prints.
//
//	go-client [-target HOST:PORT] [-api-key KEY]
//
// The target defaults to $AIGNE_HUB_TARGET or 127.0.0.1:8080 (Envoy; the server's own port,
// 50051 by default, works too), the key to $AIGNE_HUB_API_KEY.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	hubv1 "aigne.dev/hub/gen/go/aigne/hub/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const prompt = "a lighthouse at dawn"

func main() {
	target := flag.String("target", envOr("AIGNE_HUB_TARGET", "127.0.0.1:8080"), "gRPC address")
	apiKey := flag.String("api-key", os.Getenv("AIGNE_HUB_API_KEY"), "API key")
	flag.Parse()
	if err := run(*target, *apiKey); err != nil {
		fmt.Fprintln(os.Stderr, "go-client:", err)
		os.Exit(1)
	}
}

func run(target, apiKey string) error {
	conn, err := grpc.Dial(target, grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := hubv1.NewImageServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiKey)
	fmt.Printf("target %s\n", target)

	for _, format := range []string{"url", "b64_json"} {
		if err := generate(ctx, client, format); err != nil {
			return fmt.Errorf("generate %s: %w", format, err)
		}
	}
	return badRequest(ctx, client)
}

// generate asks for two 256x256 images in one response format and reads each of them.
func generate(ctx context.Context, client hubv1.ImageServiceClient, format string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	n := int32(2)
	var header metadata.MD
	reply, err := client.Generate(ctx, &hubv1.GenerateRequest{
		Prompt: prompt, N: &n, Size: "256x256", ResponseFormat: format,
	}, grpc.Header(&header))
	if err != nil {
		return err
	}
	fmt.Printf("generate format=%s images=%d model=%s\n", format, len(reply.Data), first(header.Get("x-model-served")))
	for i, image := range reply.Data {
		data := image.GetB64Json()
		if format == "url" {
			if data, err = fetch(image.GetUrl()); err != nil {
				return err
			}
		}
		width, height, err := pngSize(data)
		if err != nil {
			return fmt.Errorf("image %d: %w", i, err)
		}
		fmt.Printf("image format=%s index=%d type=png width=%d height=%d bytes=%d\n",
			format, i, width, height, len(data))
	}
	return nil
}

// badRequest sends n=11 and prints what the error's google.rpc.Status details say.
func badRequest(ctx context.Context, client hubv1.ImageServiceClient) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n := int32(11)
	_, err := client.Generate(ctx, &hubv1.GenerateRequest{Prompt: prompt, N: &n})
	if err == nil {
		return errors.New("n=11 was accepted")
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	fmt.Printf("error code=%s message=%q\n", codeName(st.Code().String()), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			fmt.Printf("error_info reason=%s domain=%s\n", d.GetReason(), d.GetDomain())
		case *errdetails.BadRequest:
			for _, violation := range d.GetFieldViolations() {
				fmt.Printf("field_violation field=%s description=%q\n",
					violation.GetField(), violation.GetDescription())
			}
		}
	}
	return nil
}

func fetch(url string) ([]byte, error) {
	resp, err := http.Get(url) // the signed URL needs no API key
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// pngSize checks the PNG signature and reads the size from the IHDR chunk.
func pngSize(data []byte) (width, height uint32, err error) {
	const signature = "\x89PNG\r\n\x1a\n"
	if len(data) < 24 || string(data[:8]) != signature || string(data[12:16]) != "IHDR" {
		return 0, 0, errors.New("not a PNG")
	}
	return binary.BigEndian.Uint32(data[16:20]), binary.BigEndian.Uint32(data[20:24]), nil
}

// codeName turns grpc-go's "InvalidArgument" into the canonical "INVALID_ARGUMENT".
func codeName(name string) string {
	out := make([]byte, 0, len(name)+4)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				out = append(out, '_')
			}
		} else if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
