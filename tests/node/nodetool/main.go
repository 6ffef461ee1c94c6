// nodetool: the one small static program in the node's helper image (tests/node/).
//
//	nodetool pause                 the pod sandbox: waits, reaps orphaned children, exits on SIGTERM/SIGINT
//	nodetool serve-file ADDR FILE  GET / answers FILE's current content (a consumer pod's mounted Secret)
//	nodetool client ADDR           a REST client with the pod's own ServiceAccount token:
//	    POST /rotate?url=U         POSTs to U once, with this request's body as JSON (if any);
//	                               answers {"code":N,"body":"..."} or {"error":"..."}
//	    POST /loop?url=U           starts POSTing to U once a second
//	    POST /loop/stop            stops the loop; answers every outcome as a JSON list
//
// The test drives the pods over their pod IPs from the host, so it needs neither kubectl exec nor
// kubectl logs.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

const tokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

func main() {
	if len(os.Args) < 2 || os.Args[1] == "pause" {
		pause()
		return
	}
	var err error
	switch os.Args[1] {
	case "serve-file":
		err = serveFile(os.Args[2], os.Args[3])
	case "client":
		err = client(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	fmt.Fprintln(os.Stderr, "nodetool:", err)
	os.Exit(1)
}

func pause() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited (a pod's orphans are re-parented to PID 1).
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

func serveFile(addr, file string) error {
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		b, err := os.ReadFile(file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write(b)
	})
	return http.ListenAndServe(addr, nil)
}

type outcome struct {
	At    string `json:"at"`
	Code  int    `json:"code,omitempty"`
	Body  string `json:"body,omitempty"`
	Error string `json:"error,omitempty"`
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// post sends one request (a rotation, or a create with `body`) with the pod's current
// ServiceAccount token.
func post(url string, body []byte) outcome {
	o := outcome{At: time.Now().UTC().Format(time.RFC3339Nano)}
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		o.Error = err.Error()
		return o
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		o.Error = err.Error()
		return o
	}
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	resp, err := httpClient.Do(req)
	if err != nil {
		o.Error = err.Error()
		return o
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	o.Code = resp.StatusCode
	o.Body = string(answer)
	if err != nil {
		o.Error = err.Error()
	}
	return o
}

func client(addr string) error {
	var mu sync.Mutex
	var outcomes []outcome
	var stop chan struct{}
	done := make(chan struct{})
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	http.HandleFunc("POST /rotate", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		if err != nil {
			writeJSON(w, outcome{Error: err.Error()})
			return
		}
		writeJSON(w, post(r.URL.Query().Get("url"), body))
	})
	http.HandleFunc("POST /loop", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if stop != nil {
			http.Error(w, "a loop is running", http.StatusConflict)
			return
		}
		url := r.URL.Query().Get("url")
		outcomes = nil
		stop = make(chan struct{})
		done = make(chan struct{})
		go func(stop, done chan struct{}) {
			defer close(done)
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				o := post(url, nil)
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}(stop, done)
		w.WriteHeader(http.StatusNoContent)
	})
	http.HandleFunc("POST /loop/stop", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		s, d := stop, done
		stop = nil
		mu.Unlock()
		if s == nil {
			http.Error(w, "no loop is running", http.StatusConflict)
			return
		}
		close(s)
		<-d
		mu.Lock()
		defer mu.Unlock()
		writeJSON(w, outcomes)
	})
	return http.ListenAndServe(addr, nil)
}
