// Command generate calls stablecog-gateway's CreateGeneration and prints the output URLs.
//
//	generate -target 127.0.0.1:50051 -seed 42 "a lighthouse at dawn"
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	stablecogv1 "github.com/stablecog/gateway/gen/stablecog/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "the gateway's host:port")
	seed := flag.Int64("seed", -1, "seed (negative: random)")
	outputs := flag.Int("num-outputs", 0, "number of images (0: the upstream's default)")
	timeout := flag.Duration("timeout", 300*time.Second, "deadline of the call")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: generate [flags] PROMPT")
		os.Exit(2)
	}
	conn, err := grpc.Dial(*target, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	request := &stablecogv1.GenerationRequest{Prompt: flag.Arg(0)}
	if *seed >= 0 {
		request.Seed = seed
	}
	if *outputs > 0 {
		n := int32(*outputs)
		request.NumOutputs = &n
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	response, err := stablecogv1.NewGenerationServiceClient(conn).CreateGeneration(ctx, request)
	if err != nil {
		s := status.Convert(err)
		fmt.Printf("%s: %s\n", s.Code(), s.Message())
		os.Exit(1)
	}
	for _, output := range response.Outputs {
		fmt.Println(output.Url)
	}
	fmt.Printf("seed %d, cache %s\n", response.Settings.GetSeed(), response.CacheResult)
}
