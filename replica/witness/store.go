package witness

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/strata-storage/strata/internal/dirlock"
)

const (
	stateFile   = "witness.json"
	tempFile    = "witness.json.tmp"
	lockFile    = "witness.lock"
	fileVersion = 1
)

// fileState is DIR/witness.json. Leases are not in it: they change on every
// renewal, and after a restart every held group is leased for one full
// lease anyway.
type fileState struct {
	Version int          `json:"version"`
	Groups  []savedGroup `json:"groups"`
}

type savedGroup struct {
	Group    string    `json:"group"`
	Epoch    uint64    `json:"epoch"`
	Holder   string    `json:"holder"`
	Members  [2]string `json:"members"`
	Outdated string    `json:"outdated"`
}

// store writes the state file durably. Its steps run in this order:
// write the temp file, fsync it, rename it over the state file, fsync the
// directory. A crash before the rename leaves the old state; after the
// directory fsync the new one is the state.
type store struct {
	dir string
	// step, when set (tests), runs before each step named
	// "write", "sync", "rename", "syncdir"; an error stands for that step
	// failing (or the process dying there).
	step func(name string) error
}

func (s *store) hook(name string) error {
	if s.step == nil {
		return nil
	}
	return s.step(name)
}

// load reads the state file; a missing one is an empty state. A temp file
// left by a crash before its rename is removed: it was never the state.
func (s *store) load() ([]savedGroup, error) {
	if err := os.Remove(filepath.Join(s.dir, tempFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s: %w", tempFile, err)
	}
	path := filepath.Join(s.dir, stateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f fileState
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Version != fileVersion {
		return nil, fmt.Errorf("%s has format version %d; this strata reads version %d", path, f.Version, fileVersion)
	}
	seen := map[string]bool{}
	for _, g := range f.Groups {
		if err := checkSaved(g); err != nil {
			return nil, fmt.Errorf("%s: group %q: %v", path, g.Group, err)
		}
		if seen[g.Group] {
			return nil, fmt.Errorf("%s: group %q appears twice", path, g.Group)
		}
		seen[g.Group] = true
	}
	return f.Groups, nil
}

func checkSaved(g savedGroup) error {
	if err := validID("group", g.Group); err != nil {
		return err
	}
	for _, m := range g.Members {
		if err := validID("member", m); err != nil {
			return err
		}
	}
	if g.Members[0] == g.Members[1] {
		return errors.New("both members are the same")
	}
	isMember := func(n string) bool { return n == g.Members[0] || n == g.Members[1] }
	if g.Holder != "" && !isMember(g.Holder) {
		return fmt.Errorf("holder %q is not a member", g.Holder)
	}
	if g.Outdated != "" && !isMember(g.Outdated) {
		return fmt.Errorf("outdated %q is not a member", g.Outdated)
	}
	if g.Epoch == 0 {
		return errors.New("epoch 0")
	}
	return nil
}

// save replaces the state file with groups. Any error leaves the on-disk
// state unknown (old or new) and must be treated as fatal by the caller: a
// failed fsync is never retried.
func (s *store) save(groups []savedGroup) error {
	sort.Slice(groups, func(i, j int) bool { return groups[i].Group < groups[j].Group })
	b, err := json.MarshalIndent(fileState{Version: fileVersion, Groups: groups}, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	tmp := filepath.Join(s.dir, tempFile)
	if err := s.hook("write"); err != nil {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := s.hook("sync"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := s.hook("rename"); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, stateFile)); err != nil {
		return err
	}
	if err := s.hook("syncdir"); err != nil {
		return err
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// lockDir takes an exclusive flock on DIR/witness.lock and writes our pid
// into it, so a second witness on DIR fails clearly and names the holder.
func lockDir(dir string) (*os.File, error) {
	f, holder, err := dirlock.Lock(dir, lockFile)
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("%w: %s is used by another strata witness (pid %s); stop it first or use another --data", ErrDirInUse, dir, holder)
	}
	return f, err
}
