package registry

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// The sessions view of a cluster: each replica writes a row for each
// agent it holds into one Redis hash, and reads the other replicas' rows.
// A row carries the holder it was written for, so that readers skip rows
// of holders that are gone, and the registry script removes a row with
// its entry.

// A Row is one agent's row of the sessions view, for this replica's
// holder of ID.
type Row struct {
	ID   string
	conn string // the holder's fence token
	// JSON is the row as stored: the holder and the session.
	JSON string
}

// sessionRow is a sessions view row in Redis.
type sessionRow struct {
	Owner   string          `json:"owner"`
	Conn    string          `json:"conn"`
	Session json.RawMessage `json:"session"`
}

// Row returns the row of session (JSON) for the agent holding id here,
// or false when none does.
func (r *Redis[V]) Row(id string, session json.RawMessage) (Row, bool, error) {
	r.mu.Lock()
	h := r.local[id]
	r.mu.Unlock()
	if h == nil {
		return Row{}, false, nil
	}
	b, err := json.Marshal(sessionRow{Owner: r.self, Conn: h.conn, Session: session})
	if err != nil {
		return Row{}, false, err
	}
	return Row{ID: id, conn: h.conn, JSON: string(b)}, true, nil
}

// WriteRows writes rows, each only while its holder still holds its ID,
// so that a row written as its agent leaves is not left behind.
func (r *Redis[V]) WriteRows(rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	args := make([]any, 0, 3*len(rows))
	for _, row := range rows {
		args = append(args, row.ID, row.conn, row.JSON)
	}
	_, err := r.run("rows", args...)
	return err
}

// OtherRows returns the sessions (JSON) of the agents other replicas
// hold: rows whose holder still holds its ID.
func (r *Redis[V]) OtherRows(ctx context.Context) ([]json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	rows, err1 := r.rdb.HGetAll(ctx, redisKeySessions).Result()
	ids, err2 := r.rdb.HGetAll(ctx, redisKeyIDs).Result()
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	now := time.Now().UnixMilli()
	var out []json.RawMessage
	for id, raw := range rows {
		var row sessionRow
		var e regEntry
		if json.Unmarshal([]byte(raw), &row) != nil || json.Unmarshal([]byte(ids[id]), &e) != nil {
			continue
		}
		if row.Owner == r.self || e.Owner != row.Owner || e.Conn != row.Conn || int64(e.Lease) <= now || !r.signed(id, e.Owner, e.Conn) {
			continue
		}
		out = append(out, row.Session)
	}
	return out, nil
}
