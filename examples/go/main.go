// Command caption captions an image file with the Go binding, streaming the text.
// Usage: go run . MODEL_DIR_OR_REPO IMAGE [MAX_NEW_TOKENS]
// (libsmolcap must be visible to pkg-config and the dynamic loader.)
package main

import (
	"fmt"
	"os"
	"strconv"

	"smolcap"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintf(os.Stderr, "usage: %s MODEL_DIR_OR_REPO IMAGE [MAX_NEW_TOKENS]\n", os.Args[0])
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3:]); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(model, imagePath string, rest []string) error {
	data, err := os.ReadFile(imagePath)
	if err != nil {
		return err
	}
	m, err := smolcap.Load(model, nil)
	if err != nil {
		return err
	}
	defer m.Close()
	s, err := m.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	p := smolcap.DefaultParams()
	if len(rest) > 0 {
		n, err := strconv.ParseUint(rest[0], 10, 32)
		if err != nil {
			return err
		}
		p.MaxNewTokens = uint32(n)
	}
	st, err := s.Stream(smolcap.Encoded(data), &p)
	if err != nil {
		return err
	}
	defer st.Close()
	for {
		piece, ok, err := st.Next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		fmt.Print(piece)
	}
	c, err := st.Result()
	if err != nil {
		return err
	}
	fmt.Printf("\n(%d tokens)\n", len(c.Tokens))
	return nil
}
