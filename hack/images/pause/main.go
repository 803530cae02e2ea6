// Command pause is the sandbox ("pause") container of the test cluster's real node: it holds the pod's namespaces,
// reaps orphaned children (it is PID 1 when the pod shares its process namespace) and exits 0 on SIGINT or SIGTERM,
// as Kubernetes' own build/pause/linux/pause.c does. Built here because the test machine has no image registry.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (buildkite-operator test image)")
		return
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
