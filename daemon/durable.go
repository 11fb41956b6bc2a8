package daemon

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/cdp"
)

// writeFileDurable replaces path with b so that a crash leaves the old or
// the new content, never a mix: temp file, fsync, rename, fsync the
// directory.
func writeFileDurable(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err := cdp.SyncDir(vfs.Default, filepath.Dir(path)); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

// loadEntries reads a JSON list saved by saveEntries (a missing file is an
// empty list) into a map by key.
func loadEntries[T any](path string, key func(*T) string) (map[string]*T, error) {
	m := map[string]*T{}
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(b) > 0 {
		var list []*T
		if err := json.Unmarshal(b, &list); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, e := range list {
			m[key(e)] = e
		}
	}
	return m, nil
}

// saveEntries writes a map's values, in key order, as a JSON list, durably.
func saveEntries[T any](path string, m map[string]*T) error {
	keys := slices.SortedFunc(maps.Keys(m), cmp.Compare[string])
	list := make([]*T, 0, len(keys))
	for _, k := range keys {
		list = append(list, m[k])
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	return writeFileDurable(path, b)
}
