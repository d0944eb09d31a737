package sqlcore

import (
	"database/sql"
	"strconv"
	"strings"
)

// IDList reads rows of one integer column (row ids picked by a query) and
// returns them comma-separated, for an IN (...) clause, with how many
// there were. It closes rs.
func IDList(rs *sql.Rows) (string, int, error) {
	defer rs.Close()
	var ids []string
	for rs.Next() {
		var id int64
		if err := rs.Scan(&id); err != nil {
			return "", 0, err
		}
		ids = append(ids, strconv.FormatInt(id, 10))
	}
	if err := rs.Err(); err != nil {
		return "", 0, err
	}
	return strings.Join(ids, ","), len(ids), nil
}
