// Command bk-test-service is the sidecar of the real-node tests: a job's step names its image as a `kubernetes`
// plugin sidecar and the step's command reaches it on localhost. It serves HTTP on 127.0.0.1 only (so only containers
// of the same pod reach it), answers every GET with one line naming itself and its host (the pod's name), and exits 0
// on SIGTERM or SIGINT, as kubelet stops a native sidecar when the job's containers are done. Stdlib only: built
// static by hack/images/build.sh, because the test machine has no image registry.
//
// Usage: bk-test-service [PORT]   (default $PORT, else 8080)
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Marker starts every answer; tests look for it in a job's log.
const Marker = "bk-test-service"

func main() {
	port := os.Getenv("PORT")
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	if port == "" {
		port = "8080"
	}
	hostname, err := os.Hostname()
	if err != nil {
		log.Fatalf("%s: hostname: %v", Marker, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s: %s %s from %s", Marker, r.Method, r.URL.Path, r.RemoteAddr)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s answered on %s\n", Marker, hostname)
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		log.Fatalf("%s: %v", Marker, err)
	}
	log.Printf("%s: listening on %s as uid %d", Marker, listener.Addr(), os.Getuid())

	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	select {
	case err := <-served:
		log.Fatalf("%s: %v", Marker, err)
	case <-stop.Done():
	}
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if err := server.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("%s: shutdown: %v", Marker, err)
	}
	log.Printf("%s: stopped", Marker)
}
