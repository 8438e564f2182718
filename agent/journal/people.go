package journal

import "time"

// Person is one login as the journal tells it: who, since when, until
// when (zero while still connected), and the sessions open now.
type Person struct {
	Conn     string    `json:"conn"`
	Login    Login     `json:"login"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until,omitzero"` // zero: still connected
	Sessions []Session `json:"sessions"`       // open at the end of the entries read
	Count    int       `json:"count"`          // sessions started in all
}

// People returns every login in entries, in order, with its sessions.
// Filter on Until.IsZero() for who is in the job now.
func People(entries []Entry) []Person {
	var out []Person
	idx := map[string]int{}
	for _, e := range entries {
		i, ok := idx[e.Conn]
		switch {
		case e.Kind == KindLogin && e.Login != nil:
			idx[e.Conn] = len(out)
			out = append(out, Person{Conn: e.Conn, Login: *e.Login, Since: e.Time})
		case !ok || e.Conn == "":
		case e.Kind == KindLogout:
			out[i].Until = e.Time
			out[i].Sessions = nil
		case e.Kind == KindSessionStart && e.Session != nil:
			out[i].Sessions = append(out[i].Sessions, *e.Session)
			out[i].Count++
		case e.Kind == KindSessionEnd && e.Session != nil:
			s := out[i].Sessions[:0]
			for _, open := range out[i].Sessions {
				if open.ID != e.Session.ID {
					s = append(s, open)
				}
			}
			out[i].Sessions = s
		}
	}
	return out
}
