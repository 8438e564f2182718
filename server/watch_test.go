package server

import (
	"errors"
	"testing"
)

func TestChangesCoalesceAndNeverBlock(t *testing.T) {
	c := newChanges(2)
	n1, stop1, err := c.watch()
	if err != nil {
		t.Fatal(err)
	}
	_, stop2, err := c.watch()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.watch(); !errors.Is(err, errTooManyWatchers) {
		t.Errorf("third watcher of at most 2: err = %v, want errTooManyWatchers", err)
	}
	// Nobody reads watcher 2: many notices must not block and must merge.
	for range 1000 {
		c.notify()
	}
	<-n1
	select {
	case <-n1:
		t.Error("a watcher got two notices for changes it had not yet read")
	default:
	}
	c.notify()
	<-n1

	stop2()
	stop2() // idempotent
	if c.count() != 1 {
		t.Errorf("after one stop: %d watchers, want 1", c.count())
	}
	c.close()
	if _, open := <-n1; open {
		t.Error("close left a watcher's channel open")
	}
	stop1() // after close: harmless
	n3, stop3, err := c.watch()
	if err != nil {
		t.Fatal(err)
	}
	defer stop3()
	if _, open := <-n3; open {
		t.Error("watch after close returned an open channel")
	}
}
